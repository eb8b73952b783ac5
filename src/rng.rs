//! A small deterministic generator (SplitMix64) for the shuffles of stage two: an order
//! depends on the seed and a stream number only, so a resumed run sees the same batches.

pub(crate) struct Rng(u64);

impl Rng {
    /// The generator for `stream` (an epoch, a shuffle group) of `seed`.
    pub fn new(seed: u64, stream: u64) -> Rng {
        Rng(seed ^ stream.wrapping_mul(0x9E37_79B9_7F4A_7C15))
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Fisher-Yates over `v`.
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = (self.next() % (i as u64 + 1)) as usize;
            v.swap(i, j);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shuffle is a permutation that depends on the seed and stream only (a resumed run
    /// sees the same batches), and different streams give different orders.
    #[test]
    fn shuffles_are_permutations_fixed_by_seed_and_stream() {
        let order = |seed, stream| {
            let mut v: Vec<usize> = (0..50).collect();
            Rng::new(seed, stream).shuffle(&mut v);
            v
        };
        let a = order(7, 1);
        let mut sorted = a.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..50).collect::<Vec<_>>());
        assert_eq!(a, order(7, 1));
        assert_ne!(a, order(7, 2));
        assert_ne!(a, order(8, 1));
        assert_ne!(a, (0..50).collect::<Vec<_>>());
    }
}
