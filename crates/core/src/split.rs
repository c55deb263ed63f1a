//! The train/validation split of a dataset version: seeded and stratified, so every concept is
//! represented on both sides in its own proportion, and the same seed and inputs always give the
//! same split (on any machine, in any release: the hash below is ours, not a library's).

/// Assigns each item to training (`true`) or validation (`false`).
///
/// `items` are `(input_id, stratum)`; inputs of one stratum (usually their first positive
/// concept) are ordered by a seeded hash of their id and the first `round(n × train_fraction)`
/// go to training. A stratum of one input trains.
pub fn stratified_split(items: &[(&str, &str)], train_fraction: f64, seed: u64) -> Vec<bool> {
    let fraction = train_fraction.clamp(0.0, 1.0);
    let mut strata: std::collections::BTreeMap<&str, Vec<usize>> = Default::default();
    for (index, (_, stratum)) in items.iter().enumerate() {
        strata.entry(stratum).or_default().push(index);
    }
    let mut is_train = vec![false; items.len()];
    for members in strata.values_mut() {
        members.sort_by_key(|&i| (seeded_hash(items[i].0, seed), items[i].0));
        let n = members.len();
        let mut train = (n as f64 * fraction).round() as usize;
        if n == 1 && fraction > 0.0 {
            train = 1;
        } else if n >= 2 && fraction < 1.0 {
            // Every stratum of two or more validates at least one input, so small datasets
            // still get a validation set.
            train = train.min(n - 1);
        }
        for &i in members.iter().take(train) {
            is_train[i] = true;
        }
    }
    is_train
}

/// FNV-1a over the id, mixed with the seed through splitmix64.
fn seeded_hash(id: &str, seed: u64) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in id.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    let mut z = h ^ seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn items(n: usize, strata: &[&'static str]) -> Vec<(String, &'static str)> {
        (0..n).map(|i| (format!("input-{i}"), strata[i % strata.len()])).collect()
    }

    #[test]
    fn keeps_each_concepts_proportion() {
        let owned = items(100, &["cat", "dog", "dog", "dog"]);
        let refs: Vec<(&str, &str)> = owned.iter().map(|(a, b)| (a.as_str(), *b)).collect();
        let split = stratified_split(&refs, 0.8, 7);
        let train_cats = refs.iter().zip(&split).filter(|((_, s), t)| *s == "cat" && **t).count();
        let train_dogs = refs.iter().zip(&split).filter(|((_, s), t)| *s == "dog" && **t).count();
        assert_eq!(train_cats, 20);
        assert_eq!(train_dogs, 60);
    }

    #[test]
    fn small_strata_still_validate() {
        let refs = [("a", "cat"), ("b", "cat"), ("c", "dog")];
        let split = stratified_split(&refs, 0.8, 1);
        assert_eq!(split.iter().filter(|t| !**t).count(), 1, "{split:?}");
        assert!(split[2], "a stratum of one trains");
    }

    #[test]
    fn same_seed_same_split_other_seed_other_split() {
        let owned = items(50, &["a"]);
        let refs: Vec<(&str, &str)> = owned.iter().map(|(a, b)| (a.as_str(), *b)).collect();
        assert_eq!(stratified_split(&refs, 0.8, 1), stratified_split(&refs, 0.8, 1));
        assert_ne!(stratified_split(&refs, 0.8, 1), stratified_split(&refs, 0.8, 2));
        // order of the items does not matter
        let mut reversed = refs.clone();
        reversed.reverse();
        let mut back = stratified_split(&reversed, 0.8, 1);
        back.reverse();
        assert_eq!(back, stratified_split(&refs, 0.8, 1));
    }
}
