//! Byte counts the way operators read them (`256.0 MiB`), formatted without floating point or
//! allocation, so the preload library's stderr lines and the CLI print the same numbers.

use core::fmt;

/// A signed byte count, shown in the largest binary unit it reaches, to one decimal (rounded).
pub struct Bytes(pub i64);

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.0 < 0 { "-" } else { "" };
        let value = self.0.unsigned_abs();
        for (name, size) in [("GiB", 1u64 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)] {
            if value >= size {
                let tenths = (u128::from(value) * 10 + u128::from(size) / 2) / u128::from(size);
                return write!(f, "{sign}{}.{} {name}", tenths / 10, tenths % 10);
            }
        }
        write!(f, "{sign}{value} B")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_read_like_ps() {
        assert_eq!(Bytes(0).to_string(), "0 B");
        assert_eq!(Bytes(1023).to_string(), "1023 B");
        assert_eq!(Bytes(1536).to_string(), "1.5 KiB");
        assert_eq!(Bytes(256 << 20).to_string(), "256.0 MiB");
        assert_eq!(
            Bytes(400_000_024).to_string(),
            "381.5 MiB",
            "rounded, not cut"
        );
        assert_eq!(Bytes(-(3 << 30)).to_string(), "-3.0 GiB");
        assert_eq!(Bytes(i64::MIN).to_string(), "-8589934592.0 GiB");
    }
}
