//! Fixture trees for every layout the cgroup readers support, built in temporary directories and
//! read through `RootedFs`, plus one read of the real machine.

use super::*;
use crate::fs::{ReadError, RootedFs};
use std::format;
use std::string::{String, ToString};
use std::vec::Vec;

const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;
const V1_UNLIMITED: &str = "9223372036854771712\n";

/// A fixture root: files are written with their parent directories.
struct Tree {
    dir: tempfile::TempDir,
}

impl Tree {
    fn new() -> Tree {
        Tree {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn file(&self, path: &str, text: &str) -> &Tree {
        let path = self.dir.path().join(path.trim_start_matches('/'));
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
        self
    }

    fn remove(&self, path: &str) -> &Tree {
        std::fs::remove_file(self.dir.path().join(path.trim_start_matches('/'))).unwrap();
        self
    }

    fn mkdir(&self, path: &str) -> &Tree {
        std::fs::create_dir_all(self.dir.path().join(path.trim_start_matches('/'))).unwrap();
        self
    }

    fn fs(&self) -> RootedFs {
        RootedFs::new(self.dir.path())
    }

    fn meminfo(&self, total_kib: u64) -> &Tree {
        self.file(
            "proc/meminfo",
            &format!(
                "MemTotal:       {total_kib} kB\nMemFree:         1000000 kB\nMemAvailable:    2000000 kB\n"
            ),
        )
    }
}

/// A container's mountinfo: an overlay root whose line is longer than the scan buffer (real
/// ones with many layers are), proc, the cgroup mounts given, and a few bind mounts.
fn mountinfo(cgroup_lines: &str) -> String {
    let layers: Vec<String> = (1..200)
        .map(|i| {
            format!("/var/lib/containerd/io.containerd.snapshotter.v1.overlayfs/snapshots/{i}/fs")
        })
        .collect();
    format!(
        "1284 1163 0:284 / / rw,relatime master:456 - overlay overlay rw,lowerdir={},upperdir=/u,workdir=/w\n\
         1285 1284 0:287 / /proc rw,nosuid,nodev,noexec,relatime - proc proc rw\n\
         1286 1284 0:288 / /dev rw,nosuid - tmpfs tmpfs rw,size=65536k,mode=755\n\
         {cgroup_lines}\
         1301 1284 259:1 /var/lib/kubelet/pods/0f3c/volumes/kubernetes.io~configmap/config /etc/pg\\040config ro,relatime - ext4 /dev/nvme0n1p1 rw\n\
         1302 1286 0:283 / /dev/shm rw,nosuid,nodev,noexec,relatime - tmpfs shm rw,size=65536k\n",
        layers.join(":")
    )
}

const V2_MOUNT: &str =
    "1290 1288 0:30 / /sys/fs/cgroup ro,nosuid,nodev,noexec,relatime - cgroup2 cgroup rw,nsdelegate,memory_recursiveprot\n";

const V2_STAT: &str = "anon 104857600\nfile 52428800\nkernel 8388608\nkernel_stack 327680\n\
pagetables 1048576\nsec_pagetables 0\npercpu 1024\nsock 4096\nvmalloc 0\nshmem 20971520\n\
zswap 0\nzswapped 0\nfile_mapped 10485760\nfile_dirty 8192\nfile_writeback 0\nswapcached 0\n\
anon_thp 0\nfile_thp 0\nshmem_thp 0\ninactive_anon 94371840\nactive_anon 31457280\n\
inactive_file 20971520\nactive_file 31457280\nunevictable 0\nslab_reclaimable 2097152\n\
slab_unreclaimable 1048576\nslab 3145728\nworkingset_refault_anon 0\npgfault 123456\n\
pgmajfault 12\nthp_fault_alloc 0\n";

const V2_EVENTS: &str = "low 0\nhigh 0\nmax 17\noom 2\noom_kill 1\noom_group_kill 0\n";

const V2_PRESSURE: &str = "some avg10=0.00 avg60=0.12 avg300=0.05 total=123456\n\
full avg10=0.00 avg60=0.01 avg300=0.00 total=65432\n";

/// A v2 cgroup directory with every file the readers use.
fn v2_cgroup(tree: &Tree, dir: &str, max: &str) {
    tree.file(
        &format!("{dir}/cgroup.controllers"),
        "cpuset cpu io memory hugetlb pids rdma misc\n",
    )
    .file(&format!("{dir}/memory.max"), max)
    .file(&format!("{dir}/memory.current"), "157286400\n")
    .file(&format!("{dir}/memory.stat"), V2_STAT)
    .file(&format!("{dir}/memory.events"), V2_EVENTS)
    .file(&format!("{dir}/memory.pressure"), V2_PRESSURE);
}

/// Kubernetes v2 in a private cgroup namespace: `0::/`, the container's cgroup at the mount.
fn v2_private() -> Tree {
    let tree = Tree::new();
    tree.file("proc/self/cgroup", "0::/\n")
        .file("proc/self/mountinfo", &mountinfo(V2_MOUNT))
        .meminfo(16 * 1024 * 1024);
    v2_cgroup(&tree, "sys/fs/cgroup", "536870912\n");
    tree
}

const POD: &str = "/kubepods.slice/kubepods-burstable.slice/\
kubepods-burstable-pod3f1c2a7e_5b2d_4c1e_9a0f_7d6e8c9b1a2f.slice";
const SCOPE: &str =
    "cri-containerd-8e1b4f0c3a2d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b1c2d3e4f5a6b7c8d9e0f.scope";

/// Kubernetes v2 in the host cgroup namespace, the whole tree mounted: limits on the container
/// scope (`scope_max`), the pod slice (`pod_max`) and the QoS slices; none on the root.
fn v2_host(scope_max: &str, pod_max: &str) -> Tree {
    let tree = Tree::new();
    tree.file("proc/self/cgroup", &format!("0::{POD}/{SCOPE}\n"))
        .file("proc/self/mountinfo", &mountinfo(V2_MOUNT))
        .meminfo(16 * 1024 * 1024)
        .file(
            "sys/fs/cgroup/cgroup.controllers",
            "cpuset cpu io memory pids\n",
        );
    v2_cgroup(&tree, &format!("sys/fs/cgroup{POD}/{SCOPE}"), scope_max);
    v2_cgroup(&tree, &format!("sys/fs/cgroup{POD}"), pod_max);
    v2_cgroup(
        &tree,
        "sys/fs/cgroup/kubepods.slice/kubepods-burstable.slice",
        "max\n",
    );
    v2_cgroup(&tree, "sys/fs/cgroup/kubepods.slice", "16106127360\n");
    tree
}

#[test]
fn v2_private_namespace() {
    let tree = v2_private();
    let fs = tree.fs();
    let cgroup = own_cgroup(&fs).unwrap();
    assert_eq!(cgroup.version(), Version::V2);
    assert_eq!(cgroup.dir().as_bytes(), b"/sys/fs/cgroup");
    assert_eq!(cgroup.mount_point(), b"/sys/fs/cgroup");
    assert_eq!(cgroup.depth(), 0);
    assert!(cgroup.memory_controller());
    let limit = cgroup.effective_limit(&fs).unwrap();
    assert_eq!(
        limit,
        EffectiveLimit {
            bytes: 512 * MIB,
            source: LimitSource::Cgroup { up: 0 },
            cgroup_limit: Some(512 * MIB),
            mem_total: 16 * GIB,
        }
    );
    let snapshot = cgroup.snapshot(&fs).unwrap();
    assert_eq!(snapshot.usage, 150 * MIB);
    assert_eq!(
        snapshot.stat,
        MemoryStat {
            anon: 100 * MIB,
            file: 50 * MIB,
            shmem: Some(20 * MIB)
        }
    );
    assert_eq!(
        snapshot.events,
        MemoryEvents {
            max: 17,
            oom: Some(2),
            oom_kill: Some(1),
            under_oom: None
        }
    );
    assert_eq!(
        snapshot.pressure,
        Some(Pressure {
            some_us: 123456,
            full_us: Some(65432)
        })
    );
    let level = Level {
        dir: b"/sys/fs/cgroup",
        up: 0,
    };
    let stat = v2::read_stat(&fs, level).unwrap();
    assert_eq!(stat.pagetables, Some(MIB));
    assert_eq!(stat.pgmajfault, Some(12));
    assert_eq!(v2::read_events(&fs, level).unwrap().oom_group_kill, Some(0));
}

#[test]
fn v2_host_namespace_kubernetes_burstable_pod() {
    let tree = v2_host("536870912\n", "1073741824\n");
    let fs = tree.fs();
    let cgroup = own_cgroup(&fs).unwrap();
    let expected_dir = format!("/sys/fs/cgroup{POD}/{SCOPE}");
    assert_eq!(cgroup.dir().as_bytes(), expected_dir.as_bytes());
    assert_eq!(cgroup.mount_point(), b"/sys/fs/cgroup");
    assert_eq!(cgroup.depth(), 4);
    assert_eq!(
        cgroup.ancestor(1).unwrap().as_bytes(),
        format!("/sys/fs/cgroup{POD}").as_bytes()
    );
    assert_eq!(cgroup.ancestor(4).unwrap().as_bytes(), b"/sys/fs/cgroup");
    assert_eq!(cgroup.ancestor(5), None);
    let limit = cgroup.effective_limit(&fs).unwrap();
    assert_eq!(limit.bytes, 512 * MIB);
    assert_eq!(limit.source, LimitSource::Cgroup { up: 0 });
    assert_eq!(cgroup.snapshot(&fs).unwrap().usage, 150 * MIB);

    // The pod's limit is the smaller one (another container of the pod has none).
    let tree = v2_host("max\n", "268435456\n");
    let fs = tree.fs();
    let cgroup = own_cgroup(&fs).unwrap();
    let limit = cgroup.effective_limit(&fs).unwrap();
    assert_eq!(limit.bytes, 256 * MIB);
    assert_eq!(limit.source, LimitSource::Cgroup { up: 1 });
    let where_ = cgroup
        .file_path(FileId::Cgroup {
            name: "memory.max",
            up: 1,
        })
        .unwrap();
    assert_eq!(
        where_.as_bytes(),
        format!("/sys/fs/cgroup{POD}/memory.max").as_bytes()
    );
}

#[test]
fn v2_mount_roots_that_are_prefixes_or_the_cgroup_itself() {
    // Mounted at the pod slice (e.g. a runtime that bind-mounts part of the tree).
    let tree = v2_host("536870912\n", "1073741824\n");
    let pod_mount = format!("1290 1288 0:30 {POD} /sys/fs/cgroup ro,nosuid - cgroup2 cgroup rw\n");
    tree.file("proc/self/mountinfo", &mountinfo(&pod_mount));
    let fs = tree.fs();
    // What that mount shows: the pod slice at the mount point, our scope below it.
    v2_cgroup(&tree, &format!("sys/fs/cgroup/{SCOPE}"), "536870912\n");
    v2_cgroup(&tree, "sys/fs/cgroup", "1073741824\n");
    let cgroup = own_cgroup(&fs).unwrap();
    assert_eq!(
        cgroup.dir().as_bytes(),
        format!("/sys/fs/cgroup/{SCOPE}").as_bytes()
    );
    assert_eq!(cgroup.depth(), 1);
    assert_eq!(cgroup.effective_limit(&fs).unwrap().bytes, 512 * MIB);

    // Our own cgroup bind-mounted, at a mount point with a space in it; the whole tree is also
    // mounted elsewhere, and that mount wins because it shows the ancestors.
    let tree = Tree::new();
    let own = format!("{POD}/{SCOPE}");
    tree.file("proc/self/cgroup", &format!("0::{own}\n"))
        .meminfo(16 * 1024 * 1024)
        .file(
            "proc/self/mountinfo",
            &mountinfo(&format!(
                "1290 1288 0:30 {own} /sys/fs/my\\040cgroup ro - cgroup2 cgroup rw\n"
            )),
        );
    v2_cgroup(&tree, "sys/fs/my cgroup", "536870912\n");
    let fs = tree.fs();
    let cgroup = own_cgroup(&fs).unwrap();
    assert_eq!(cgroup.dir().as_bytes(), b"/sys/fs/my cgroup");
    assert_eq!(cgroup.depth(), 0);
    assert_eq!(cgroup.effective_limit(&fs).unwrap().bytes, 512 * MIB);

    tree.file(
        "proc/self/mountinfo",
        &mountinfo(&format!(
            "1290 1288 0:30 {own} /sys/fs/my\\040cgroup ro - cgroup2 cgroup rw\n{V2_MOUNT}"
        )),
    );
    v2_cgroup(&tree, &format!("sys/fs/cgroup{own}"), "max\n");
    v2_cgroup(&tree, &format!("sys/fs/cgroup{POD}"), "268435456\n");
    let cgroup = own_cgroup(&fs).unwrap();
    assert_eq!(cgroup.mount_point(), b"/sys/fs/cgroup");
    assert_eq!(cgroup.effective_limit(&fs).unwrap().bytes, 256 * MIB);
}

/// A hybrid machine with the memory controller on v1, a Kubernetes-on-Docker style path, and
/// limits: own 1 GiB, pod 512 MiB, the rest unlimited.
fn v1_tree(own: &str, pod: &str, hierarchical: &str) -> Tree {
    let tree = Tree::new();
    let path = "/kubepods/burstable/pod0f3c/4a5b6c";
    tree.file(
        "proc/self/cgroup",
        &format!(
            "12:pids:{path}\n11:cpu,cpuacct:{path}\n10:memory:{path}\n1:name=systemd:{path}\n0::/\n"
        ),
    )
    .file(
        "proc/self/mountinfo",
        &mountinfo(
            "1290 1288 0:30 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755\n\
             1291 1290 0:31 / /sys/fs/cgroup/unified ro,nosuid - cgroup2 cgroup2 rw\n\
             1292 1290 0:32 / /sys/fs/cgroup/cpu,cpuacct ro,nosuid - cgroup cgroup rw,cpu,cpuacct\n\
             1293 1290 0:33 / /sys/fs/cgroup/memory ro,nosuid shared:9 - cgroup cgroup rw,memory\n\
             1294 1290 0:34 / /sys/fs/cgroup/pids ro,nosuid - cgroup cgroup rw,pids\n",
        ),
    )
    .meminfo(8 * 1024 * 1024);
    let base = "sys/fs/cgroup/memory";
    for (dir, limit) in [
        (format!("{base}{path}"), own),
        (format!("{base}/kubepods/burstable/pod0f3c"), pod),
        (format!("{base}/kubepods/burstable"), V1_UNLIMITED),
        (format!("{base}/kubepods"), V1_UNLIMITED),
        (base.to_string(), V1_UNLIMITED),
    ] {
        v1_cgroup(&tree, &dir, limit, hierarchical);
    }
    tree
}

fn v1_cgroup(tree: &Tree, dir: &str, limit: &str, hierarchical: &str) {
    tree.file(&format!("{dir}/memory.limit_in_bytes"), limit)
        .file(&format!("{dir}/memory.usage_in_bytes"), "209715200\n")
        .file(&format!("{dir}/memory.failcnt"), "3\n")
        .file(
            &format!("{dir}/memory.oom_control"),
            "oom_kill_disable 0\nunder_oom 0\noom_kill 1\n",
        )
        .file(
            &format!("{dir}/memory.stat"),
            &format!(
                "cache 62914560\nrss 104857600\nrss_huge 0\nshmem 10485760\nmapped_file 1048576\n\
                 dirty 0\nwriteback 0\npgpgin 100\npgpgout 50\npgfault 1000\npgmajfault 1\n\
                 inactive_anon 0\nactive_anon 104857600\ninactive_file 0\nactive_file 62914560\n\
                 unevictable 0\nhierarchical_memory_limit {hierarchical}\n\
                 hierarchical_memsw_limit 9223372036854771712\ntotal_cache 73400320\n\
                 total_rss 115343360\ntotal_rss_huge 0\ntotal_shmem 20971520\n\
                 total_mapped_file 1048576\n"
            ),
        );
}

#[test]
fn v1_with_an_ancestor_limit_smaller_than_our_own() {
    let tree = v1_tree("1073741824\n", "536870912\n", "536870912");
    let fs = tree.fs();
    let cgroup = own_cgroup(&fs).unwrap();
    assert_eq!(cgroup.version(), Version::V1);
    assert_eq!(
        cgroup.dir().as_bytes(),
        b"/sys/fs/cgroup/memory/kubepods/burstable/pod0f3c/4a5b6c"
    );
    assert_eq!(cgroup.depth(), 4);
    let limit = cgroup.effective_limit(&fs).unwrap();
    // hierarchical_memory_limit agrees with the visible pod level, which explains it better.
    assert_eq!(limit.bytes, 512 * MIB);
    assert_eq!(limit.source, LimitSource::Cgroup { up: 1 });
    assert_eq!(limit.mem_total, 8 * GIB);
    let snapshot = cgroup.snapshot(&fs).unwrap();
    assert_eq!(snapshot.usage, 200 * MIB);
    assert_eq!(
        snapshot.stat,
        MemoryStat {
            anon: 110 * MIB,
            file: 70 * MIB,
            shmem: Some(20 * MIB)
        }
    );
    assert_eq!(
        snapshot.events,
        MemoryEvents {
            max: 3,
            oom: None,
            oom_kill: Some(1),
            under_oom: Some(false)
        }
    );
    assert_eq!(snapshot.pressure, None);
    let level = Level {
        dir: cgroup.dir().as_bytes(),
        up: 0,
    };
    let stat = v1::read_stat(&fs, level).unwrap();
    assert_eq!(
        (stat.rss, stat.cache, stat.shmem),
        (100 * MIB, 60 * MIB, Some(10 * MIB))
    );
    assert!(!v1::read_oom_control(&fs, level).unwrap().oom_kill_disable);
}

#[test]
fn v1_hierarchical_limit_from_an_invisible_ancestor() {
    // Docker with the host cgroup namespace: only our own cgroup is bind-mounted, unlimited,
    // but an ancestor we cannot see limits it to 256 MiB.
    let tree = Tree::new();
    tree.file(
        "proc/self/cgroup",
        "9:memory:/docker/4a5b6c\n0::/system.slice/docker-4a5b6c.scope\n",
    )
    .file(
        "proc/self/mountinfo",
        &mountinfo(
            "1293 1290 0:33 /docker/4a5b6c /sys/fs/cgroup/memory ro - cgroup cgroup rw,memory\n",
        ),
    )
    .meminfo(8 * 1024 * 1024);
    v1_cgroup(&tree, "sys/fs/cgroup/memory", V1_UNLIMITED, "268435456");
    let fs = tree.fs();
    let cgroup = own_cgroup(&fs).unwrap();
    assert_eq!(cgroup.dir().as_bytes(), b"/sys/fs/cgroup/memory");
    assert_eq!(cgroup.depth(), 0);
    let limit = cgroup.effective_limit(&fs).unwrap();
    assert_eq!(limit.bytes, 256 * MIB);
    assert_eq!(limit.source, LimitSource::Hierarchical);
}

#[test]
fn unlimited_everywhere_gives_mem_total() {
    let tree = v2_host("max\n", "max\n");
    tree.file("sys/fs/cgroup/kubepods.slice/memory.max", "max\n");
    let fs = tree.fs();
    let limit = own_cgroup(&fs).unwrap().effective_limit(&fs).unwrap();
    assert_eq!(
        limit,
        EffectiveLimit {
            bytes: 16 * GIB,
            source: LimitSource::MemTotal,
            cgroup_limit: None,
            mem_total: 16 * GIB,
        }
    );

    let tree = v1_tree(V1_UNLIMITED, V1_UNLIMITED, "9223372036854771712");
    let fs = tree.fs();
    let limit = own_cgroup(&fs).unwrap().effective_limit(&fs).unwrap();
    assert_eq!(
        (limit.bytes, limit.source),
        (8 * GIB, LimitSource::MemTotal)
    );
    assert_eq!(limit.cgroup_limit, None);

    // A cgroup limit above the machine's memory is capped, but still reported.
    let tree = v2_private();
    tree.file("sys/fs/cgroup/memory.max", "68719476736\n");
    let fs = tree.fs();
    let limit = own_cgroup(&fs).unwrap().effective_limit(&fs).unwrap();
    assert_eq!(
        (limit.bytes, limit.source),
        (16 * GIB, LimitSource::MemTotal)
    );
    assert_eq!(limit.cgroup_limit, Some(64 * GIB));
}

#[test]
fn v2_without_the_memory_controller() {
    // A process in the host's root cgroup: no memory.* files, the machine's memory is the limit.
    let tree = Tree::new();
    tree.file("proc/self/cgroup", "0::/\n")
        .file("proc/self/mountinfo", &mountinfo(V2_MOUNT))
        .meminfo(4 * 1024 * 1024)
        .file("sys/fs/cgroup/cgroup.controllers", "cpu io pids\n");
    let fs = tree.fs();
    let cgroup = own_cgroup(&fs).unwrap();
    assert!(!cgroup.memory_controller());
    let limit = cgroup.effective_limit(&fs).unwrap();
    assert_eq!(
        (limit.bytes, limit.source),
        (4 * GIB, LimitSource::MemTotal)
    );
    assert_eq!(
        cgroup.usage(&fs),
        Err(CgroupError::Missing(FileId::Cgroup {
            name: "memory.current",
            up: 0
        }))
    );
}

#[test]
fn missing_files() {
    let tree = v2_private();
    tree.remove("proc/self/cgroup");
    assert_eq!(
        own_cgroup(&tree.fs()),
        Err(CgroupError::Missing(FileId::ProcSelfCgroup))
    );

    let tree = v2_private();
    tree.remove("proc/self/mountinfo");
    assert_eq!(
        own_cgroup(&tree.fs()),
        Err(CgroupError::Missing(FileId::ProcSelfMountinfo))
    );

    // The cgroup directory named by the fixture does not exist.
    let tree = v2_host("max\n", "max\n");
    tree.file("proc/self/cgroup", "0::/kubepods.slice/elsewhere.scope\n");
    assert_eq!(
        own_cgroup(&tree.fs()),
        Err(CgroupError::Missing(FileId::Cgroup {
            name: "cgroup.controllers",
            up: 0
        }))
    );

    let tree = v2_private();
    tree.remove("proc/meminfo");
    let fs = tree.fs();
    let cgroup = own_cgroup(&fs).unwrap();
    assert_eq!(
        cgroup.effective_limit(&fs),
        Err(CgroupError::Missing(FileId::ProcMeminfo))
    );
    tree.meminfo(1024).remove("sys/fs/cgroup/memory.events");
    assert_eq!(
        cgroup.snapshot(&fs),
        Err(CgroupError::Missing(FileId::Cgroup {
            name: "memory.events",
            up: 0
        }))
    );
    // Pressure alone may be missing (PSI disabled): the snapshot goes on without it.
    tree.file("sys/fs/cgroup/memory.events", V2_EVENTS)
        .remove("sys/fs/cgroup/memory.pressure");
    assert_eq!(cgroup.snapshot(&fs).unwrap().pressure, None);

    // In v1 every memory cgroup has memory.limit_in_bytes: one missing above us is an error.
    let tree = v1_tree("1073741824\n", "536870912\n", "536870912");
    tree.remove("sys/fs/cgroup/memory/kubepods/memory.limit_in_bytes");
    let fs = tree.fs();
    let cgroup = own_cgroup(&fs).unwrap();
    let error = cgroup.effective_limit(&fs).unwrap_err();
    let file = FileId::Cgroup {
        name: "memory.limit_in_bytes",
        up: 3,
    };
    assert_eq!(error, CgroupError::Missing(file));
    assert_eq!(
        cgroup.file_path(file).unwrap().as_bytes(),
        b"/sys/fs/cgroup/memory/kubepods/memory.limit_in_bytes"
    );
    assert_eq!(
        error.to_string(),
        "memory.limit_in_bytes of the cgroup 3 levels above ours does not exist"
    );
}

/// `RootedFs` with one path made unreadable, as `EACCES` would make it for a non-root user.
struct Denying {
    inner: RootedFs,
    denied: &'static [u8],
}

impl FileSystem for Denying {
    type File = <RootedFs as FileSystem>::File;
    fn open(&self, path: &[u8]) -> Result<Self::File, ReadError> {
        if path == self.denied {
            return Err(ReadError::Unreadable { errno: 13 });
        }
        self.inner.open(path)
    }
}

#[test]
fn unreadable_files() {
    // A directory where a file is expected: open works, read fails with EISDIR.
    let tree = v2_private();
    tree.remove("sys/fs/cgroup/memory.max")
        .mkdir("sys/fs/cgroup/memory.max");
    let fs = tree.fs();
    let cgroup = own_cgroup(&fs).unwrap();
    let memory_max = FileId::Cgroup {
        name: "memory.max",
        up: 0,
    };
    assert_eq!(
        cgroup.effective_limit(&fs),
        Err(CgroupError::Unreadable {
            file: memory_max,
            errno: 21
        })
    );

    let tree = v2_private();
    let fs = Denying {
        inner: tree.fs(),
        denied: b"/proc/self/mountinfo",
    };
    assert_eq!(
        own_cgroup(&fs),
        Err(CgroupError::Unreadable {
            file: FileId::ProcSelfMountinfo,
            errno: 13
        })
    );
    let fs = Denying {
        inner: tree.fs(),
        denied: b"/sys/fs/cgroup/memory.stat",
    };
    let cgroup = own_cgroup(&fs).unwrap();
    let error = cgroup.stat(&fs).unwrap_err();
    assert_eq!(
        error.to_string(),
        "memory.stat of our cgroup cannot be read (errno 13)"
    );
}

#[test]
fn unreadable_pressure_other_than_eopnotsupp_is_an_error() {
    struct Failing(RootedFs, i32);
    impl FileSystem for Failing {
        type File = <RootedFs as FileSystem>::File;
        fn open(&self, path: &[u8]) -> Result<Self::File, ReadError> {
            if path == b"/sys/fs/cgroup/memory.pressure" {
                return Err(ReadError::Unreadable { errno: self.1 });
            }
            self.0.open(path)
        }
    }
    let tree = v2_private();
    let fs = Failing(tree.fs(), 95);
    let cgroup = own_cgroup(&fs).unwrap();
    assert_eq!(cgroup.snapshot(&fs).unwrap().pressure, None);
    let fs = Failing(tree.fs(), 5);
    assert_eq!(
        cgroup.snapshot(&fs),
        Err(CgroupError::Unreadable {
            file: FileId::Cgroup {
                name: "memory.pressure",
                up: 0
            },
            errno: 5
        })
    );
}

#[test]
fn garbage_contents_name_the_file_and_line() {
    let own = |name| FileId::Cgroup { name, up: 0 };
    let cases: &[(&str, &str, CgroupError)] = &[
        (
            "sys/fs/cgroup/memory.max",
            "lots\n",
            CgroupError::Garbage {
                file: own("memory.max"),
                line: 1,
            },
        ),
        (
            "sys/fs/cgroup/memory.max",
            "",
            CgroupError::Garbage {
                file: own("memory.max"),
                line: 1,
            },
        ),
        (
            "sys/fs/cgroup/memory.max",
            "-1\n",
            CgroupError::Garbage {
                file: own("memory.max"),
                line: 1,
            },
        ),
        (
            "sys/fs/cgroup/memory.max",
            "1024\n2048\n",
            CgroupError::Garbage {
                file: own("memory.max"),
                line: 2,
            },
        ),
        (
            "sys/fs/cgroup/memory.max",
            "99999999999999999999999\n",
            CgroupError::Garbage {
                file: own("memory.max"),
                line: 1,
            },
        ),
        (
            "proc/meminfo",
            "MemTotal: lots kB\n",
            CgroupError::Garbage {
                file: FileId::ProcMeminfo,
                line: 1,
            },
        ),
        (
            "proc/meminfo",
            "MemTotal: 1024 MB\n",
            CgroupError::Garbage {
                file: FileId::ProcMeminfo,
                line: 1,
            },
        ),
        (
            "proc/meminfo",
            "MemFree: 1 kB\n",
            CgroupError::Garbage {
                file: FileId::ProcMeminfo,
                line: 0,
            },
        ),
    ];
    for (path, text, expected) in cases {
        let tree = v2_private();
        tree.file(path, text);
        let fs = tree.fs();
        let cgroup = own_cgroup(&fs).unwrap();
        assert_eq!(
            cgroup.effective_limit(&fs),
            Err(*expected),
            "{path}: {text:?}"
        );
    }

    let snapshot_cases: &[(&str, &str, CgroupError)] = &[
        (
            "sys/fs/cgroup/memory.stat",
            "anon 1\nfile twelve\nshmem 3\n",
            CgroupError::Garbage {
                file: own("memory.stat"),
                line: 2,
            },
        ),
        (
            "sys/fs/cgroup/memory.stat",
            "file 1\nshmem 3\n",
            CgroupError::Incomplete {
                file: own("memory.stat"),
                key: "anon",
            },
        ),
        (
            "sys/fs/cgroup/memory.current",
            "\x00\x01\x02",
            CgroupError::Garbage {
                file: own("memory.current"),
                line: 1,
            },
        ),
        (
            "sys/fs/cgroup/memory.events",
            "low 0\nhigh 0\nmax 1\n",
            CgroupError::Incomplete {
                file: own("memory.events"),
                key: "oom",
            },
        ),
        (
            "sys/fs/cgroup/memory.pressure",
            "some avg10=0.00 avg60=0.00 avg300=0.00\n",
            CgroupError::Garbage {
                file: own("memory.pressure"),
                line: 1,
            },
        ),
        (
            "sys/fs/cgroup/memory.pressure",
            "sometimes total=1\n",
            CgroupError::Garbage {
                file: own("memory.pressure"),
                line: 1,
            },
        ),
    ];
    for (path, text, expected) in snapshot_cases {
        let tree = v2_private();
        tree.file(path, text);
        let fs = tree.fs();
        let cgroup = own_cgroup(&fs).unwrap();
        assert_eq!(cgroup.snapshot(&fs), Err(*expected), "{path}: {text:?}");
    }

    let discovery_cases: &[(&str, &str, CgroupError)] = &[
        (
            "proc/self/cgroup",
            "0::/\nnonsense\n",
            CgroupError::Garbage {
                file: FileId::ProcSelfCgroup,
                line: 2,
            },
        ),
        (
            "proc/self/cgroup",
            "0::relative\n",
            CgroupError::Garbage {
                file: FileId::ProcSelfCgroup,
                line: 1,
            },
        ),
        ("proc/self/cgroup", "3:cpu:/\n", CgroupError::NoMemoryCgroup),
        ("proc/self/cgroup", "", CgroupError::NoMemoryCgroup),
        (
            "proc/self/mountinfo",
            "1290 1288 0:30 / /sys/fs/cgroup rw cgroup2\n",
            CgroupError::Garbage {
                file: FileId::ProcSelfMountinfo,
                line: 1,
            },
        ),
        (
            "proc/self/mountinfo",
            "1290 1288 0:30 /\\04 /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n",
            CgroupError::Garbage {
                file: FileId::ProcSelfMountinfo,
                line: 1,
            },
        ),
        (
            "proc/self/mountinfo",
            "1 0 0:1 / / rw - ext4 /dev/vda rw\n",
            CgroupError::NotMounted(Version::V2),
        ),
        (
            "proc/self/mountinfo",
            "1290 1288 0:30 /other /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n",
            CgroupError::NotVisible(Version::V2),
        ),
    ];
    for (path, text, expected) in discovery_cases {
        let tree = v2_private();
        tree.file(path, text);
        assert_eq!(own_cgroup(&tree.fs()), Err(*expected), "{path}: {text:?}");
    }

    // v1: a negative limit and a memory.stat without hierarchical_memory_limit.
    let tree = v1_tree("-1\n", V1_UNLIMITED, "9223372036854771712");
    let fs = tree.fs();
    let error = own_cgroup(&fs).unwrap_err();
    assert_eq!(
        error,
        CgroupError::Garbage {
            file: FileId::Cgroup {
                name: "memory.limit_in_bytes",
                up: 0
            },
            line: 1
        }
    );
    assert_eq!(
        error.to_string(),
        "memory.limit_in_bytes of our cgroup is not in the kernel's format (line 1)"
    );
    let tree = v1_tree(V1_UNLIMITED, V1_UNLIMITED, "9223372036854771712");
    let own_dir = "sys/fs/cgroup/memory/kubepods/burstable/pod0f3c/4a5b6c";
    tree.file(
        &format!("{own_dir}/memory.stat"),
        "cache 1\nrss 2\ntotal_cache 1\ntotal_rss 2\n",
    );
    let fs = tree.fs();
    assert_eq!(
        own_cgroup(&fs).unwrap().effective_limit(&fs),
        Err(CgroupError::Incomplete {
            file: own("memory.stat"),
            key: "hierarchical_memory_limit"
        })
    );
    tree.file(&format!("{own_dir}/memory.oom_control"), "under_oom 0\n");
    assert_eq!(
        own_cgroup(&fs).unwrap().snapshot(&fs),
        Err(CgroupError::Incomplete {
            file: own("memory.oom_control"),
            key: "oom_kill_disable"
        })
    );
}

#[test]
fn paths_longer_than_the_capacity_are_errors() {
    let tree = v2_private();
    let long = "/x".repeat(PATH_CAPACITY);
    tree.file("proc/self/cgroup", &format!("0::{long}\n"));
    assert_eq!(own_cgroup(&tree.fs()), Err(CgroupError::PathTooLong));
}

/// The machine running the tests: whatever its cgroup layout, the answer is a result or a
/// well-formed error, never a panic or a zero limit.
#[test]
fn the_real_machine() {
    let fs = RootedFs::new("/");
    let cgroup = match own_cgroup(&fs) {
        Ok(cgroup) => cgroup,
        Err(error) => {
            assert!(!error.to_string().is_empty());
            std::eprintln!("no cgroup here: {error}");
            return;
        }
    };
    std::eprintln!(
        "cgroup {} at {} (depth {})",
        cgroup.version().name(),
        cgroup.dir(),
        cgroup.depth()
    );
    assert!(cgroup.dir().starts_with(cgroup.mount_point()));
    match cgroup.effective_limit(&fs) {
        Ok(limit) => {
            std::eprintln!("{limit:?}");
            assert!(limit.bytes > 0 && limit.bytes <= limit.mem_total);
        }
        Err(error) => std::eprintln!("limit: {error}"),
    }
    match cgroup.snapshot(&fs) {
        Ok(snapshot) => std::eprintln!("{snapshot:?}"),
        Err(error) => std::eprintln!("snapshot: {error}"),
    }
}

#[test]
fn v1_memory_co_mounted_with_another_controller() {
    let tree = Tree::new();
    tree.file("proc/self/cgroup", "3:cpuacct,memory:/batch/job1\n0::/\n")
        .file(
            "proc/self/mountinfo",
            &mountinfo(
                "40 31 0:35 / /sys/fs/cgroup/cpuacct,memory rw - cgroup cgroup rw,cpuacct,memory\n",
            ),
        )
        .meminfo(8 * 1024 * 1024);
    let base = "sys/fs/cgroup/cpuacct,memory";
    v1_cgroup(
        &tree,
        &format!("{base}/batch/job1"),
        V1_UNLIMITED,
        "2147483648",
    );
    v1_cgroup(
        &tree,
        &format!("{base}/batch"),
        "2147483648\n",
        "2147483648",
    );
    v1_cgroup(&tree, base, V1_UNLIMITED, "9223372036854771712");
    let fs = tree.fs();
    let cgroup = own_cgroup(&fs).unwrap();
    assert_eq!(cgroup.version(), Version::V1);
    assert_eq!(cgroup.depth(), 2);
    let limit = cgroup.effective_limit(&fs).unwrap();
    assert_eq!(
        (limit.bytes, limit.source),
        (2 * GIB, LimitSource::Cgroup { up: 1 })
    );
}
