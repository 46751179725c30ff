//! The library's life cycle as the dynamic loader drives it: the constructor (before the
//! program's own constructors and `main`) and the destructor (at a clean exit). The per-thread
//! and fork hooks are armed by `guard::start`; a new thread's is armed by `threads` before it
//! runs. This is the only module that starts the others, so none of them calls back into its
//! caller at start-up.

use crate::{guard, loader, policy, threads};

/// When the library is loaded: start the guard, then look up what the refusal policy and the
/// hooks need (the C library's `dlopen` and `pthread_create`, PostgreSQL's globals) outside any
/// allocation — `dlsym` takes the loader's lock and may allocate itself.
extern "C" fn library_loaded() {
    guard::start();
    loader::resolve();
    threads::resolve();
    policy::look_up_symbols();
}

/// At a clean exit (`exit`, return from `main`): the process gives its slot back.
extern "C" fn process_exiting() {
    guard::process_exiting();
}

#[used]
#[link_section = ".init_array"]
static LIBRARY_LOADED_HOOK: extern "C" fn() = library_loaded;

#[used]
#[link_section = ".fini_array"]
static PROCESS_EXIT_HOOK: extern "C" fn() = process_exiting;
