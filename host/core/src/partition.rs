//! Kafka's default partitioner, so a Kafka producer keyed by the ordering key and Kairos agree
//! on which partition a task belongs to.
//!
//! This is a port of `org.apache.kafka.common.utils.Utils.murmur2` (MurmurHash2, 32-bit, seed
//! `0x9747b28c`) and of the keyed branch of Kafka's default partitioner:
//! `Utils.toPositive(Utils.murmur2(keyBytes)) % numPartitions`, with
//! `toPositive(n) = n & 0x7fffffff`.

/// Kafka's `Utils.murmur2`: MurmurHash2 (32-bit) with seed `0x9747b28c`, returned as the Java
/// `int` it computes.
pub fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;

    // Java's `int` arithmetic is wrapping 32-bit arithmetic; `>>>` is a logical shift, which is
    // what `>>` does on `u32`. The bit patterns are identical, so compute in `u32`.
    let length = data.len();
    let mut h: u32 = SEED ^ (length as u32);

    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }

    // The Java `switch` falls through from case 3 to case 1.
    let tail = chunks.remainder();
    if tail.len() >= 3 {
        h ^= u32::from(tail[2]) << 16;
    }
    if tail.len() >= 2 {
        h ^= u32::from(tail[1]) << 8;
    }
    if !tail.is_empty() {
        h ^= u32::from(tail[0]);
        h = h.wrapping_mul(M);
    }

    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// The partition Kafka's default partitioner picks for a record whose key is `key` (UTF-8
/// bytes): `(murmur2(key) & 0x7fffffff) % partitions`.
///
/// # Panics
/// If `partitions` is 0 (a topic always has at least one partition; configuration validation
/// rejects 0 before this is called).
pub fn partition_for(key: &str, partitions: u32) -> u32 {
    assert!(partitions > 0, "partition count must be at least 1");
    ((murmur2(key.as_bytes()) & 0x7fff_ffff) as u32) % partitions
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Kafka's own vectors, from `UtilsTest.testMurmur2` in apache/kafka,
    /// clients/src/test/java/org/apache/kafka/common/utils/UtilsTest.java.
    const KAFKA_VECTORS: &[(&[u8], i32)] = &[
        (b"21", -973_932_308),
        (b"foobar", -790_332_482),
        (b"a-little-bit-long-string", -985_981_536),
        (b"a-little-bit-longer-string", -1_486_304_829),
        (
            b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
            -58_897_971,
        ),
        // `new byte[] {'a', 'b', 'c'}` in the Java test.
        (b"abc", 479_470_107),
    ];

    #[test]
    fn murmur2_matches_kafka_utils_test() {
        for (data, expected) in KAFKA_VECTORS {
            assert_eq!(
                murmur2(data),
                *expected,
                "murmur2({:?})",
                String::from_utf8_lossy(data)
            );
        }
    }

    #[test]
    fn murmur2_covers_a_one_byte_tail() {
        // Kafka's vectors have tails of 0, 2 and 3 bytes but none of 1 byte. These 9-byte keys
        // do; their values are the Java client's as quoted by a third-party Go test that checks
        // its own port against franz-go's Kafka-compatible partitioner.
        assert_eq!(murmur2(b"order-100"), -955_961_047);
        assert_eq!(murmur2(b"order-101"), 1_112_104_930);
        assert_eq!(murmur2(b"user-1002"), 494_644_997);
    }

    #[test]
    fn partition_for_uses_the_positive_hash_modulo_n() {
        // Derived from the Kafka vectors above: (hash & 0x7fffffff) % n.
        // "21": -973932308 & 0x7fffffff = 1173551340.
        assert_eq!(partition_for("21", 1), 0);
        assert_eq!(partition_for("21", 12), 1_173_551_340 % 12);
        assert_eq!(partition_for("21", 12), 0);
        assert_eq!(partition_for("21", 100), 40);
        // "foobar": -790332482 & 0x7fffffff = 1357151166.
        assert_eq!(partition_for("foobar", 12), 6);
        assert_eq!(partition_for("foobar", 100), 66);
        // "abc": 479470107 is already positive.
        assert_eq!(partition_for("abc", 12), 3);
        assert_eq!(partition_for("abc", 100), 7);
        // "a-little-bit-longer-string": -1486304829 & 0x7fffffff = 661178819.
        assert_eq!(partition_for("a-little-bit-longer-string", 12), 11);
        assert_eq!(partition_for("a-little-bit-longer-string", 256), 195);
    }

    #[test]
    fn partition_for_stays_in_range() {
        for n in 1..=64u32 {
            for i in 0..200 {
                let key = format!("incident-{i}");
                let p = partition_for(&key, n);
                assert!(p < n);
                assert_eq!(p, partition_for(&key, n));
            }
        }
    }
}
