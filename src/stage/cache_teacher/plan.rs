//! Stage one's shard plan: which shards of the dataset this run writes.

use std::collections::HashSet;

use crate::cache::manifest::{self, Manifest, PartInfo};

/// Rows in shard `j` of a dataset of `total` rows cut into shards of `per`: shard `j`
/// always holds rows `j * per ..`, the last one fewer.
pub(super) fn shard_len(j: usize, per: u64, total: u64) -> u64 {
    per.min(total - j as u64 * per)
}

/// The shards a run writes: indices `j` of its part (all of them without `--part`), after
/// the finished ones. Shard `j` always holds rows `j * R .. (j + 1) * R`.
pub(super) struct ShardPlan {
    /// Shards still to write, in order.
    pub todo: Vec<usize>,
    /// Rows of the part's shards, and of those finished already.
    pub part_rows: u64,
    pub done_rows: u64,
}

impl ShardPlan {
    pub fn of(man: &Manifest, part: PartInfo) -> ShardPlan {
        let (total_rows, per) = (man.dataset.rows, man.rows_per_shard);
        let all_shards = total_rows.div_ceil(per) as usize;
        let done: HashSet<usize> = man.shards.iter().filter_map(|s| manifest::shard_index(&s.file)).collect();
        let mine: Vec<usize> = (0..all_shards).filter(|j| j % part.count == part.index).collect();
        ShardPlan {
            todo: mine.iter().copied().filter(|j| !done.contains(j)).collect(),
            part_rows: mine.iter().map(|&j| shard_len(j, per, total_rows)).sum(),
            done_rows: man.shards.iter().map(|s| s.rows).sum(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Shard j holds rows j * per .. (j + 1) * per, the last one what is left: 1197 rows in
    /// shards of 500 are 500, 500, 197; an exact multiple has no short shard.
    #[test]
    fn shards_tile_the_rows() {
        assert_eq!((0..3).map(|j| shard_len(j, 500, 1197)).collect::<Vec<_>>(), [500, 500, 197]);
        assert_eq!((0..2).map(|j| shard_len(j, 600, 1200)).collect::<Vec<_>>(), [600, 600]);
        assert_eq!(shard_len(0, 1024, 5), 5);
    }
}
