//! Tests of the whole store: versions against a model, crashes, expiry,
//! purging, damaged files, schema changes, partitioning.

use std::collections::{BTreeMap, BTreeSet};
use std::num::{NonZeroU64, NonZeroUsize};
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema};
use futures::TryStreamExt;
use object_store::{ObjectStore, local::LocalFileSystem, memory::InMemory, path::Path};
use rand::{Rng, SeedableRng, rngs::StdRng};
use tempfile::TempDir;

use super::*;

/// What the store should hold: key → (value, expiry).
type Model = BTreeMap<Vec<u8>, (Vec<u8>, Option<i64>)>;

fn schema_with(key: (&str, DataType), value: (&str, DataType)) -> StateSchema {
    StateSchema::new(
        Arc::new(Schema::new(vec![Field::new(key.0, key.1, false)])),
        Arc::new(Schema::new(vec![Field::new(value.0, value.1, true)])),
    )
}

fn schema() -> StateSchema {
    schema_with(("symbol", DataType::Utf8), ("sum", DataType::Int64))
}

fn config(num_partitions: usize, snapshot_interval: u64) -> StateStoreConfig {
    StateStoreConfig {
        num_partitions: NonZeroUsize::new(num_partitions).unwrap(),
        snapshot_interval: NonZeroU64::new(snapshot_interval).unwrap(),
        ..Default::default()
    }
}

fn memory_dir() -> CheckpointDir {
    CheckpointDir::new(Arc::new(InMemory::new()), Path::from("chk/state/0"))
}

fn local_dir() -> (TempDir, CheckpointDir) {
    let tmp = tempfile::tempdir().unwrap();
    let fs = LocalFileSystem::new_with_prefix(tmp.path()).unwrap();
    (
        tmp,
        CheckpointDir::new(Arc::new(fs), Path::from("chk/state/0")),
    )
}

async fn open(dir: &CheckpointDir, config: StateStoreConfig, version: u64) -> Result<StateStore> {
    StateStore::open(dir.clone(), schema(), config, version).await
}

/// Every file under the store's directory, relative to it, sorted.
async fn all_files(dir: &CheckpointDir) -> Vec<String> {
    let prefix = format!("{}/", dir.root());
    let mut names: Vec<String> = dir
        .store()
        .list(Some(dir.root()))
        .map_ok(|meta| meta.location.to_string())
        .try_collect::<Vec<_>>()
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.strip_prefix(&prefix).unwrap().to_string())
        .collect();
    names.sort();
    names
}

fn assert_matches(store: &StateStore, model: &Model, context: &str) {
    let got: Model = store
        .iter()
        .map(|e| (e.key.to_vec(), (e.value.to_vec(), e.expires_at_ms)))
        .collect();
    assert_eq!(&got, model, "{context}");
    assert_eq!(store.len(), model.len(), "{context}");
    assert_eq!(store.metrics().rows_total, model.len() as u64, "{context}");
    for (key, (value, _)) in model {
        assert_eq!(store.get(key), Some(&value[..]), "{context}");
    }
    let n = store.partitions().len();
    for partition in store.partitions() {
        for key in partition.iter().map(|e| e.key) {
            let home = partition_for_key(store.schema().partition_key(key), n);
            assert_eq!(home, partition.id(), "{context}");
        }
    }
}

fn random_key(rng: &mut StdRng) -> Vec<u8> {
    match rng.random_range(0..60u8) {
        0 => Vec::new(),
        1 => vec![0, 255, 0],
        k => format!("key{k}").into_bytes(),
    }
}

fn random_value(rng: &mut StdRng) -> Vec<u8> {
    let len = rng.random_range(0..12);
    (0..len).map(|_| rng.random()).collect()
}

/// Drives a store and a model with the same random operations over many
/// versions (reopening now and then), then opens every version again.
async fn random_history(dir: CheckpointDir, config: StateStoreConfig, seed: u64, versions: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut store = open(&dir, config, 0).await.unwrap();
    let mut model = Model::new();
    let mut models = vec![model.clone()];
    let mut adopted = 0;
    for version in 1..=versions {
        let now = version as i64 * 100;
        let ops = if rng.random_bool(0.15) {
            0
        } else {
            rng.random_range(1..40)
        };
        for _ in 0..ops {
            let key = random_key(&mut rng);
            match rng.random_range(0..10) {
                0..=3 => {
                    let value = random_value(&mut rng);
                    store.put(&key, &value);
                    model.insert(key, (value, None));
                }
                4..=5 => {
                    let value = random_value(&mut rng);
                    let at = now + rng.random_range(0..400);
                    store.put_with_ttl(&key, &value, at);
                    model.insert(key, (value, Some(at)));
                }
                6..=7 => assert_eq!(store.remove(&key), model.remove(&key).is_some()),
                8 => {
                    let before = model.len();
                    model.retain(|_, (_, at)| at.is_none_or(|at| at > now));
                    assert_eq!(store.remove_expired(now), before - model.len());
                }
                _ => {
                    // A key added and removed in the same version.
                    let key = [b"temp".as_slice(), &key].concat();
                    store.put(&key, b"gone");
                    assert!(store.remove(&key));
                }
            }
        }
        assert_matches(
            &store,
            &model,
            &format!("seed {seed}, building version {version}"),
        );
        let metrics = store.commit().await.unwrap();
        adopted += metrics.snapshots_adopted;
        assert_eq!((metrics.version, store.version()), (version, version));
        assert!(!store.has_changes());
        if rng.random_bool(0.5) {
            store.finish_snapshots().await.unwrap();
        }
        models.push(model.clone());
        if rng.random_bool(0.25) {
            store = open(&dir, config, version).await.unwrap();
            assert_matches(&store, &model, &format!("seed {seed}, reopened {version}"));
        }
    }
    for (version, expected) in models.iter().enumerate() {
        let store = open(&dir, config, version as u64).await.unwrap();
        assert_eq!(store.version(), version as u64);
        assert_matches(&store, expected, &format!("seed {seed}, version {version}"));
    }
    if config.snapshot_interval.get() < versions {
        assert!(adopted > 0, "seed {seed}: no snapshot was ever listed");
    }
}

#[tokio::test]
async fn every_version_reopens_as_the_model_says_in_memory() {
    for (seed, config) in [
        (1, config(4, 3)),
        (2, config(8, 10)),
        (3, config(1, 1)),
        (4, config(3, 5)),
    ] {
        random_history(memory_dir(), config, seed, 40).await;
    }
}

#[tokio::test]
async fn every_version_reopens_as_the_model_says_on_local_disk() {
    let (_tmp, dir) = local_dir();
    random_history(dir, config(4, 3), 5, 30).await;
}

#[tokio::test]
async fn the_snapshot_interval_can_change_between_runs() {
    let dir = memory_dir();
    let mut model = Model::new();
    let mut store = open(&dir, config(2, 100), 0).await.unwrap();
    for version in 1..=30u64 {
        let key = format!("k{}", version % 7).into_bytes();
        store.put(&key, &version.to_le_bytes());
        model.insert(key, (version.to_le_bytes().to_vec(), None));
        store.commit().await.unwrap();
    }
    // 30 deltas per partition so far; a smaller interval takes over.
    let mut store = open(&dir, config(2, 4), 30).await.unwrap();
    store.put(b"k1", b"x");
    model.insert(b"k1".to_vec(), (b"x".to_vec(), None));
    let metrics = store.commit().await.unwrap();
    assert_eq!(metrics.snapshots_started, 2, "{metrics:?}");
    assert_eq!(store.finish_snapshots().await.unwrap(), 2);
    let metrics = store.commit().await.unwrap();
    assert_eq!(metrics.snapshots_adopted, 2, "{metrics:?}");
    assert_matches(&open(&dir, config(2, 4), 31).await.unwrap(), &model, "v31");
    assert_matches(&open(&dir, config(2, 4), 32).await.unwrap(), &model, "v32");
}

async fn check_rerun(dir: CheckpointDir, config: StateStoreConfig) {
    let mut store = open(&dir, config, 0).await.unwrap();
    store.put(b"a", b"1");
    store.put(b"b", b"1");
    store.commit().await.unwrap();
    store.put(b"c", b"1");
    store.commit().await.unwrap();

    // First attempt at version 3, touching several partitions.
    store.put(b"a", b"crashed");
    store.put(b"x", b"crashed");
    store.remove(b"b");
    store.commit().await.unwrap();

    // The batch is re-run from version 2 with different changes.
    let mut store = open(&dir, config, 2).await.unwrap();
    store.put(b"c", b"2");
    store.commit().await.unwrap();

    let model: Model = [("a", "1"), ("b", "1"), ("c", "2")]
        .into_iter()
        .map(|(k, v)| (k.as_bytes().to_vec(), (v.as_bytes().to_vec(), None)))
        .collect();
    let mut store = open(&dir, config, 3).await.unwrap();
    assert_matches(&store, &model, "re-run version 3");

    // And the store goes on from the re-run version.
    store.remove(b"a");
    store.commit().await.unwrap();
    let mut model = model;
    model.remove(&b"a"[..]);
    assert_matches(&open(&dir, config, 4).await.unwrap(), &model, "version 4");
    assert_matches(
        &open(&dir, config, 3).await.unwrap(),
        &[("a", "1"), ("b", "1"), ("c", "2")]
            .into_iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), (v.as_bytes().to_vec(), None)))
            .collect(),
        "version 3 again",
    );
}

#[tokio::test]
async fn a_rerun_version_replaces_the_crashed_attempt() {
    for config in [config(4, 10), config(2, 1), config(3, 2)] {
        check_rerun(memory_dir(), config).await;
        let (_tmp, dir) = local_dir();
        check_rerun(dir, config).await;
    }
}

#[tokio::test]
async fn a_crash_before_the_commit_file_leaves_the_version_unopenable_until_rerun() {
    let dir = memory_dir();
    let config = config(4, 10);
    let mut store = open(&dir, config, 0).await.unwrap();
    store.put(b"a", b"1");
    store.commit().await.unwrap();
    store.put(b"b", b"crashed");
    store.commit().await.unwrap();
    // Simulate a crash after the data files but before the commit file.
    dir.delete("2.commit").await.unwrap();
    let err = open(&dir, config, 2).await.unwrap_err();
    assert!(matches!(err, StateError::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains("chk/state/0/2.commit"), "{err}");
    assert!(err.to_string().contains("never committed"), "{err}");

    let mut store = open(&dir, config, 1).await.unwrap();
    store.put(b"c", b"2");
    store.commit().await.unwrap();
    let store = open(&dir, config, 2).await.unwrap();
    assert_eq!(store.get(b"b"), None);
    assert_eq!(store.get(b"c"), Some(&b"2"[..]));
    assert_eq!(store.len(), 2);
}

/// The delta file and the commit file are written at once, so a crash may
/// leave the commit file without the delta it lists: the version fails to
/// open, naming the missing file, and the batch's re-run (from the version
/// before, untouched) rewrites both.
#[tokio::test]
async fn a_crash_before_the_delta_file_leaves_the_version_unopenable_until_rerun() {
    for local in [false, true] {
        let (_tmp, dir) = match local {
            true => {
                let (tmp, dir) = local_dir();
                (Some(tmp), dir)
            }
            false => (None, memory_dir()),
        };
        let config = config(4, 10);
        let mut store = open(&dir, config, 0).await.unwrap();
        store.put(b"a", b"1");
        store.commit().await.unwrap();
        store.put(b"b", b"crashed");
        store.commit().await.unwrap();
        // Simulate a crash after the commit file but before the delta.
        dir.delete("2.delta").await.unwrap();
        let err = open(&dir, config, 2).await.unwrap_err();
        assert!(err.to_string().contains("2.delta"), "{err}");

        let mut store = open(&dir, config, 1).await.unwrap();
        assert_eq!(store.get(b"a"), Some(&b"1"[..]));
        store.put(b"c", b"2");
        store.commit().await.unwrap();
        let store = open(&dir, config, 2).await.unwrap();
        assert_eq!(store.get(b"b"), None);
        assert_eq!(store.get(b"c"), Some(&b"2"[..]));
        assert_eq!(store.len(), 2);
    }
}

#[tokio::test]
async fn entries_expire_only_when_evicted_and_keep_their_ttl_across_versions() {
    let dir = memory_dir();
    let config = config(4, 2);
    let mut store = open(&dir, config, 0).await.unwrap();
    store.put_with_ttl(b"a", b"1", 100);
    store.put_with_ttl(b"b", b"1", 200);
    store.put(b"c", b"1");
    store.commit().await.unwrap();

    let mut store = open(&dir, config, 1).await.unwrap();
    assert_eq!(store.get_entry(b"a").unwrap().expires_at_ms, Some(100));
    assert_eq!(store.get_entry(b"c").unwrap().expires_at_ms, None);
    // Past its expiry but not evicted yet: still visible.
    assert_eq!(store.get(b"a"), Some(&b"1"[..]));
    assert_eq!(store.remove_expired(99), 0);
    assert_eq!(store.remove_expired(150), 1);
    assert_eq!(store.get(b"a"), None);
    assert_eq!(store.metrics().rows_removed, 1);
    store.commit().await.unwrap();

    let mut store = open(&dir, config, 2).await.unwrap();
    assert_eq!(store.get(b"a"), None);
    assert_eq!(store.get_entry(b"b").unwrap().expires_at_ms, Some(200));
    // A plain put drops the TTL; put_with_ttl moves it.
    store.put_with_ttl(b"c", b"2", 50);
    store.put(b"c", b"3");
    store.put_with_ttl(b"b", b"2", 5000);
    assert_eq!(store.remove_expired(1000), 0);
    store.commit().await.unwrap();
    let mut store = open(&dir, config, 3).await.unwrap();
    assert_eq!(store.remove_expired(1000), 0);
    assert_eq!(store.remove_expired(5000), 1);
    assert_eq!(store.iter().map(|e| e.key).collect::<Vec<_>>(), vec![b"c"]);
}

#[tokio::test]
async fn take_expired_returns_what_it_removes_and_next_expiry_tracks_the_earliest() {
    let dir = memory_dir();
    let config = config(4, 2);
    let mut store = open(&dir, config, 0).await.unwrap();
    assert_eq!(store.next_expiry(), None);
    store.put_with_ttl(b"w1", b"one", 100);
    store.put_with_ttl(b"w2", b"two", 200);
    store.put_with_ttl(b"w3", b"three", 100);
    store.put(b"forever", b"x");
    assert_eq!(store.next_expiry(), Some(100));
    store.commit().await.unwrap();

    let mut store = open(&dir, config, 1).await.unwrap();
    assert_eq!(store.next_expiry(), Some(100));
    assert!(store.take_expired(99).is_empty());
    let mut taken = store.take_expired(150).to_vec();
    taken.sort();
    assert_eq!(
        taken,
        vec![
            (b"w1".to_vec(), b"one".to_vec()),
            (b"w3".to_vec(), b"three".to_vec())
        ]
    );
    assert_eq!(store.next_expiry(), Some(200));
    assert_eq!(store.metrics().rows_removed, 2);
    store.commit().await.unwrap();

    // The removals are part of version 2.
    let mut store = open(&dir, config, 2).await.unwrap();
    assert_eq!(store.len(), 2);
    assert_eq!(
        store.take_expired(i64::MAX).to_vec(),
        vec![(b"w2".to_vec(), b"two".to_vec())]
    );
    assert_eq!(store.next_expiry(), None);
    assert_eq!(store.get(b"forever"), Some(&b"x"[..]));
}

/// Makes `n` random changes to `store` and `model` alike: a put with
/// probability `put`, else a removal.
fn change_randomly(
    store: &mut StateStore,
    model: &mut Model,
    rng: &mut StdRng,
    n: usize,
    put: f64,
) {
    for _ in 0..n {
        let key = random_key(rng);
        if rng.random_bool(put) {
            let value = random_value(rng);
            store.put(&key, &value);
            model.insert(key, (value, None));
        } else {
            store.remove(&key);
            model.remove(&key);
        }
    }
}

/// Commits `versions` versions of changes spread over all partitions and
/// returns the model of every version.
async fn build_history(dir: &CheckpointDir, config: StateStoreConfig, versions: u64) -> Vec<Model> {
    let mut rng = StdRng::seed_from_u64(versions);
    let mut store = open(dir, config, 0).await.unwrap();
    let mut model = Model::new();
    let mut models = vec![model.clone()];
    for _ in 1..=versions {
        change_randomly(&mut store, &mut model, &mut rng, 10, 0.7);
        store.commit().await.unwrap();
        // As if the background snapshots kept up with the commits.
        store.finish_snapshots().await.unwrap();
        models.push(model.clone());
    }
    models
}

#[tokio::test]
async fn purge_keeps_every_later_version_loadable_and_deletes_the_rest() {
    let dir = memory_dir();
    let config = config(4, 4);
    let models = build_history(&dir, config, 30).await;
    let before = all_files(&dir).await;

    // Purging from an older store reads the commit file of keep_from.
    let old = open(&dir, config, 20).await.unwrap();
    let deleted = old.purge(17).await.unwrap();
    let after = all_files(&dir).await;
    assert_eq!(before.len() - after.len(), deleted);
    assert!(deleted > 16, "{deleted}");
    for version in 17..=30 {
        let store = open(&dir, config, version).await.unwrap();
        assert_matches(&store, &models[version as usize], &format!("v{version}"));
    }
    for version in 1..17 {
        let err = open(&dir, config, version).await.unwrap_err();
        assert!(
            err.to_string().contains(&format!("{version}.commit")),
            "{err}"
        );
    }
    // What remains at or below 17 is exactly what versions 17 to 30 list:
    // per partition, the snapshots they start from and the deltas after.
    let expected = listed_at_or_below(&dir, 4, 17, 30).await;
    assert_eq!(old_files_at_or_below(&after, 17), expected);
    assert!(
        expected.iter().any(|f| f.ends_with(".snapshot")),
        "{expected:?}"
    );
    assert!(after.contains(&"_metadata".to_string()));

    // Idempotent; and capped at the store's version.
    let store = open(&dir, config, 30).await.unwrap();
    assert_eq!(store.purge(17).await.unwrap(), 0);
    store.purge(1000).await.unwrap();
    assert_matches(&open(&dir, config, 30).await.unwrap(), &models[30], "v30");
    assert!(open(&dir, config, 29).await.is_err());
    let files = all_files(&dir).await;
    assert_eq!(
        files.iter().filter(|f| f.ends_with(".commit")).count(),
        1,
        "{files:?}"
    );
}

/// The data files at or below version `keep` among `files`.
fn old_files_at_or_below(files: &[String], keep: u64) -> Vec<String> {
    files
        .iter()
        .filter(|f| {
            let name = f.rsplit('/').next().unwrap_or(f);
            FileKind::parse_file_name(name).is_some_and(|(v, _, _)| v <= keep)
        })
        .cloned()
        .collect()
}

/// The data files at or below version `keep` that the commit files of
/// versions `keep..=to` list, sorted.
async fn listed_at_or_below(
    dir: &CheckpointDir,
    num_partitions: usize,
    keep: u64,
    to: u64,
) -> Vec<String> {
    let mut listed = BTreeSet::new();
    for version in keep..=to {
        let chains = read_commit(dir, version, num_partitions).await.unwrap();
        for (p, chain) in chains.iter().enumerate() {
            for (kind, file) in chain.files().filter(|(_, f)| f.version <= keep) {
                let path = fetch::locate(dir, p, kind, file).path;
                let prefix = format!("{}/", dir.root());
                listed.insert(path.as_ref().strip_prefix(&prefix).unwrap().to_string());
            }
        }
    }
    listed.into_iter().collect()
}

#[tokio::test]
async fn a_store_purging_as_it_commits_keeps_exactly_what_later_versions_list() {
    // The store remembers what the versions it committed list; what it
    // keeps must match what their commit files say.
    let dir = memory_dir();
    let config = config(3, 3);
    let mut rng = StdRng::seed_from_u64(5);
    let mut store = open(&dir, config, 0).await.unwrap();
    let mut models = vec![Model::new()];
    let mut model = Model::new();
    let mut snapshots_kept = 0;
    for version in 1..=40u64 {
        change_randomly(&mut store, &mut model, &mut rng, 8, 0.8);
        store.commit().await.unwrap();
        models.push(model.clone());
        if version % 4 == 0 {
            store.finish_snapshots().await.unwrap();
        }
        if version % 5 == 0 {
            let keep = version - 4;
            store.purge(keep).await.unwrap();
            let files = all_files(&dir).await;
            let expected = listed_at_or_below(&dir, 3, keep, version).await;
            assert_eq!(old_files_at_or_below(&files, keep), expected, "v{version}");
            snapshots_kept += expected.iter().filter(|f| f.ends_with(".snapshot")).count();
            for v in keep..=version {
                let at = open(&dir, config, v).await.unwrap();
                assert_matches(
                    &at,
                    &models[v as usize],
                    &format!("v{v} after purge at {version}"),
                );
            }
            if keep > 1 {
                assert!(open(&dir, config, keep - 1).await.is_err());
            }
        }
    }
    assert!(snapshots_kept > 0);
}

#[tokio::test]
async fn purge_on_local_disk() {
    let (_tmp, dir) = local_dir();
    let config = config(2, 3);
    let models = build_history(&dir, config, 12).await;
    let store = open(&dir, config, 12).await.unwrap();
    assert!(store.purge(10).await.unwrap() > 0);
    for version in 10..=12 {
        let store = open(&dir, config, version).await.unwrap();
        assert_matches(&store, &models[version as usize], &format!("v{version}"));
    }
    assert!(open(&dir, config, 9).await.is_err());
}

/// Two partitions, both changed in versions 1 to 4 with snapshot interval
/// 2, waiting for the background snapshots after the first three commits:
/// partition 0 snapshots version 2 (listed from version 3 on), partition 1
/// version 3 (listed from 4 on), so version 4 is made of
/// `0/2-<tag>.snapshot`, partition 0's parts of `3.delta` and `4.delta`,
/// `1/3-<tag>.snapshot` and partition 1's part of `4.delta` (each delta
/// file holds partition 0's part, then partition 1's). Returns the two
/// snapshots' names.
async fn damaged_setup() -> (CheckpointDir, StateStoreConfig, [String; 2]) {
    let dir = memory_dir();
    let config = config(2, 2);
    let keys: Vec<Vec<u8>> = (0u32..)
        .map(|i| format!("key{i}").into_bytes())
        .filter(|k| partition_for_key(k, 2) == 0)
        .take(2)
        .chain(
            (0u32..)
                .map(|i| format!("key{i}").into_bytes())
                .filter(|k| partition_for_key(k, 2) == 1)
                .take(2),
        )
        .collect();
    let mut store = open(&dir, config, 0).await.unwrap();
    for version in 1..=4u64 {
        for key in &keys {
            store.put(key, &version.to_le_bytes());
        }
        let metrics = store.commit().await.unwrap();
        let expected = match version {
            3 | 4 => 1,
            _ => 0,
        };
        assert_eq!(metrics.snapshots_adopted, expected, "{metrics:?}");
        if version < 4 {
            store.finish_snapshots().await.unwrap();
        }
    }
    let files = all_files(&dir).await;
    let snapshot = |p: usize, v: u64| {
        files
            .iter()
            .find(|f| {
                f.strip_prefix(&format!("{p}/"))
                    .and_then(FileKind::parse_file_name)
                    .is_some_and(|(version, kind, tag)| {
                        (version, kind) == (v, FileKind::Snapshot) && tag.is_some()
                    })
            })
            .unwrap_or_else(|| panic!("no snapshot {p}/{v}: {files:?}"))
            .clone()
    };
    let snapshots = [snapshot(0, 2), snapshot(1, 3)];
    for f in [&snapshots[0], "3.delta", "4.delta", &snapshots[1]] {
        assert!(files.contains(&f.to_string()), "{files:?}");
    }
    assert!(open(&dir, config, 4).await.is_ok());
    (dir, config, snapshots)
}

async fn damage(dir: &CheckpointDir, name: &str, f: impl FnOnce(Vec<u8>) -> Vec<u8>) {
    let path = match name.split_once('/') {
        Some((sub, file)) => dir.child(sub).path(file),
        None => dir.path(name),
    };
    let bytes = dir.get_bytes(&path).await.unwrap().unwrap();
    dir.put_bytes(&path, f(bytes.to_vec()), PutMode::Overwrite)
        .await
        .unwrap();
}

async fn expect_corrupt(
    dir: &CheckpointDir,
    config: StateStoreConfig,
    version: u64,
    needles: &[&str],
) {
    let err = open(dir, config, version).await.unwrap_err();
    assert!(matches!(err, StateError::Corrupt { .. }), "{err}");
    for needle in needles {
        assert!(err.to_string().contains(needle), "{needle:?} not in: {err}");
    }
}

#[tokio::test]
async fn a_truncated_delta_snapshot_or_commit_file_is_named() {
    for which in 0..3 {
        let (dir, config, snapshots) = damaged_setup().await;
        let (name, keep, part) = match which {
            // Into partition 0's part, which version 4 needs.
            0 => ("3.delta", 1, "partition 0's part"),
            1 => (snapshots[0].as_str(), 2, ""),
            _ => ("4.commit", 2, ""),
        };
        damage(&dir, name, |mut b| {
            b.truncate(b.len() * keep / 4);
            b
        })
        .await;
        expect_corrupt(
            &dir,
            config,
            4,
            &[&format!("chk/state/0/{name}"), part, "truncated"],
        )
        .await;
    }
}

#[tokio::test]
async fn a_version_reads_only_its_parts_of_a_shared_delta_file() {
    // Version 4 needs partition 0's part of 3.delta but not partition 1's
    // (partition 1 starts from its snapshot of version 3).
    let (dir, config, _) = damaged_setup().await;
    damage(&dir, "3.delta", |mut b| {
        let last = b.len() - 1;
        b[last] ^= 0x55;
        b
    })
    .await;
    open(&dir, config, 4).await.unwrap();
    expect_corrupt(
        &dir,
        config,
        3,
        &[
            "chk/state/0/3.delta",
            "partition 1's part",
            "checksum mismatch",
        ],
    )
    .await;
}

#[tokio::test]
async fn an_altered_or_lost_data_file_is_named() {
    let (dir, config, _) = damaged_setup().await;
    damage(&dir, "4.delta", |mut b| {
        let at = b.len() * 3 / 4;
        b[at] ^= 0x55;
        b
    })
    .await;
    expect_corrupt(
        &dir,
        config,
        4,
        &[
            "chk/state/0/4.delta",
            "partition 1's part",
            "checksum mismatch",
        ],
    )
    .await;
    // Version 3 does not need that file.
    open(&dir, config, 3).await.unwrap();

    let (dir, config, snapshots) = damaged_setup().await;
    let lost = snapshots[1].strip_prefix("1/").unwrap();
    dir.child("1").delete(lost).await.unwrap();
    expect_corrupt(
        &dir,
        config,
        4,
        &[
            &format!("chk/state/0/{}", snapshots[1]),
            "missing, but listed by 4.commit",
        ],
    )
    .await;
}

#[tokio::test]
async fn missing_versions_and_metadata_are_named() {
    let (dir, config, _) = damaged_setup().await;
    expect_corrupt(&dir, config, 9, &["chk/state/0/9.commit", "missing"]).await;
    dir.delete("_metadata").await.unwrap();
    expect_corrupt(&dir, config, 4, &["chk/state/0/_metadata", "missing"]).await;
}

#[tokio::test]
async fn a_changed_state_layout_is_refused_with_what_changed() {
    let dir = memory_dir();
    let mut store = open(&dir, config(4, 10), 0).await.unwrap();
    store.put(b"a", b"1");
    store.commit().await.unwrap();

    let incompatible = |schema: StateSchema, config: StateStoreConfig, version: u64| {
        let dir = dir.clone();
        async move {
            let err = StateStore::open(dir, schema, config, version)
                .await
                .unwrap_err();
            assert!(matches!(err, StateError::Incompatible { .. }), "{err}");
            assert!(err.to_string().contains("chk/state/0/_metadata"), "{err}");
            err.to_string()
        }
    };
    let msg = incompatible(
        schema_with(("symbol", DataType::Utf8), ("sum", DataType::Float64)),
        config(4, 10),
        1,
    )
    .await;
    assert!(
        msg.contains("value field 'sum' changed type from Int64 to Float64"),
        "{msg}"
    );
    let msg = incompatible(
        schema_with(("ticker", DataType::Utf8), ("sum", DataType::Int64)),
        config(4, 10),
        0,
    )
    .await;
    assert!(msg.contains("key field 'symbol' was removed"), "{msg}");
    assert!(msg.contains("key field 'ticker' was added"), "{msg}");
    let msg = incompatible(schema(), config(8, 10), 1).await;
    assert!(msg.contains("num_partitions changed from 4 to 8"), "{msg}");
    let msg = incompatible(schema().with_partition_suffix(8), config(4, 10), 1).await;
    assert!(
        msg.contains("the key bytes that decide a partition changed (all but the last 8 instead of the last 0)"),
        "{msg}"
    );

    // The snapshot interval is not part of the layout.
    open(&dir, config(4, 3), 1).await.unwrap();
}

#[tokio::test]
async fn a_key_always_lands_in_the_same_partition() {
    let dir = memory_dir();
    let config = config(8, 10);
    let mut store = open(&dir, config, 0).await.unwrap();
    let keys: Vec<Vec<u8>> = (0..200u32).map(|i| i.to_be_bytes().to_vec()).collect();
    for key in &keys {
        store.put(key, key);
    }
    store.commit().await.unwrap();
    let reopened = open(&dir, config, 1).await.unwrap();
    for key in &keys {
        let p = partition_for_key(key, 8);
        assert_eq!(store.partition_of(key), p);
        assert_eq!(reopened.partitions()[p].get(key), Some(&key[..]));
    }
    assert!(store.partitions().iter().all(|p| !p.is_empty()));
}

#[tokio::test]
async fn a_partition_suffix_keeps_a_groups_keys_in_one_partition() {
    let dir = memory_dir();
    let config = config(8, 2);
    let schema = schema().with_partition_suffix(8);
    let mut store = StateStore::open(dir.clone(), schema.clone(), config, 0)
        .await
        .unwrap();
    let key = |group: u32, seq: u64| {
        let mut key = format!("group-{group}").into_bytes();
        key.extend_from_slice(&seq.to_be_bytes());
        key
    };
    let mut model = Model::new();
    for version in 1..=4u64 {
        for group in 0..50u32 {
            for seq in 0..4 {
                let k = key(group, version * 10 + seq);
                // A group's keys go to its partition: put through the
                // partition itself, which refuses a key of another one.
                let p = partition_for_key(format!("group-{group}").as_bytes(), 8);
                assert_eq!(store.partition_of(&k), p);
                store.partitions_mut()[p].put_with_ttl(&k, b"v", version as i64);
                model.insert(k, (b"v".to_vec(), Some(version as i64)));
            }
        }
        // Expire the previous version's keys, partition by partition.
        let taken = store.take_expired(version as i64 - 1);
        model.retain(|_, (_, at)| at.unwrap() > version as i64 - 1);
        assert_eq!(taken.len(), if version == 1 { 0 } else { 200 });
        store.commit().await.unwrap();
        // Snapshots and deltas load the keys back into their partitions.
        store.finish_snapshots().await.unwrap();
        let reopened = StateStore::open(dir.clone(), schema.clone(), config, version)
            .await
            .unwrap();
        assert_matches(&reopened, &model, &format!("version {version}"));
    }
}

#[tokio::test]
async fn a_commit_touching_one_key_writes_one_delta_file() {
    let dir = memory_dir();
    let config = config(8, 100);
    let mut store = open(&dir, config, 0).await.unwrap();
    for i in 0..1000u32 {
        store.put(&i.to_be_bytes(), &[7; 100]);
    }
    let first = store.commit().await.unwrap();
    assert_eq!((first.partitions_written, first.snapshots_started), (8, 0));
    // One delta file for all eight partitions.
    assert_eq!(all_files(&dir).await, ["1.commit", "1.delta", "_metadata"]);

    let before = all_files(&dir).await;
    store.put(&5u32.to_be_bytes(), b"new");
    let metrics = store.commit().await.unwrap();
    let after = all_files(&dir).await;
    let new: Vec<&String> = after.iter().filter(|f| !before.contains(f)).collect();
    assert_eq!(new, ["2.commit", "2.delta"]);
    assert_eq!(
        (
            metrics.partitions_written,
            metrics.snapshots_started,
            metrics.rows_updated
        ),
        (1, 0, 1)
    );
    assert!(
        metrics.bytes_written * 50 < first.bytes_written,
        "{metrics:?} {first:?}"
    );

    // A version without changes writes only its commit file.
    let before = after;
    store.commit().await.unwrap();
    let after = all_files(&dir).await;
    let new: Vec<&String> = after.iter().filter(|f| !before.contains(f)).collect();
    assert_eq!(new, vec![&"3.commit".to_string()]);
    assert_eq!(open(&dir, config, 3).await.unwrap().len(), 1000);
}

#[tokio::test]
async fn deltas_written_one_file_per_partition_are_still_read() {
    // Stores written before deltas were shared have one delta file per
    // partition, `<partition>/<version>.delta`, listed without an offset.
    let dir = memory_dir();
    let config = config(4, 100);
    let mut models = build_history(&dir, config, 3).await;
    for version in 1..=3 {
        let mut chains = read_commit(&dir, version, 4).await.unwrap();
        for (p, chain) in chains.iter_mut().enumerate() {
            for delta in &mut chain.deltas {
                let offset = delta.offset.take().unwrap();
                let shared = fetch::shared_delta_path(&dir, delta.version);
                let bytes = dir.get_bytes(&shared).await.unwrap().unwrap();
                let own = bytes.slice(offset as usize..(offset + delta.bytes) as usize);
                let path = dir
                    .child(&p.to_string())
                    .path(&format!("{}.delta", delta.version));
                dir.put_bytes(&path, own, PutMode::Overwrite).await.unwrap();
            }
        }
        write_commit(&dir, version, &chains).await.unwrap();
    }
    for version in 1..=3 {
        dir.delete(&format!("{version}.delta")).await.unwrap();
    }
    for version in 1..=3 {
        let store = open(&dir, config, version).await.unwrap();
        assert_matches(&store, &models[version as usize], &format!("v{version}"));
    }
    // A version on top mixes both layouts, and purging keeps what it needs.
    let mut store = open(&dir, config, 3).await.unwrap();
    let mut model = models[3].clone();
    store.put(b"new", b"1");
    model.insert(b"new".to_vec(), (b"1".to_vec(), None));
    store.commit().await.unwrap();
    models.push(model);
    store.purge(4).await.unwrap();
    let files = all_files(&dir).await;
    assert!(files.contains(&"4.delta".to_string()), "{files:?}");
    assert!(files.contains(&"0/1.delta".to_string()), "{files:?}");
    assert_matches(&open(&dir, config, 4).await.unwrap(), &models[4], "v4");
}

#[tokio::test]
async fn metrics_describe_the_current_or_last_version() {
    let dir = memory_dir();
    let mut store = open(&dir, config(4, 10), 0).await.unwrap();
    assert_eq!(store.metrics(), StateMetrics::default());
    store.put(b"a", b"1");
    store.put(b"a", b"2");
    store.put(b"b", b"1");
    let m = store.metrics();
    assert_eq!((m.rows_total, m.rows_updated, m.rows_removed), (2, 2, 0));
    assert!(m.memory_bytes > 0);
    let committed = store.commit().await.unwrap();
    assert_eq!((committed.rows_updated, committed.rows_removed), (2, 0));
    // Right after the commit: the committed version's figures.
    let m = store.metrics();
    assert_eq!((m.rows_total, m.rows_updated, m.rows_removed), (2, 2, 0));
    assert_eq!(m.commit_time_ms, committed.commit_time_ms);
    // A new change starts the next version's figures.
    store.remove(b"a");
    let m = store.metrics();
    assert_eq!((m.rows_total, m.rows_updated, m.rows_removed), (1, 0, 1));
}

#[tokio::test]
async fn partitions_can_be_updated_in_parallel() {
    let dir = memory_dir();
    let config = config(4, 10);
    let mut store = open(&dir, config, 0).await.unwrap();
    let keys: Vec<Vec<u8>> = (0..100u32).map(|i| i.to_le_bytes().to_vec()).collect();
    let mut routed: Vec<Vec<&Vec<u8>>> = vec![Vec::new(); 4];
    for key in &keys {
        routed[store.partition_of(key)].push(key);
    }
    std::thread::scope(|s| {
        for (partition, keys) in store.partitions_mut().iter_mut().zip(&routed) {
            s.spawn(move || {
                for key in keys {
                    partition.put(key, b"v");
                }
            });
        }
    });
    assert!(store.has_changes());
    store.commit().await.unwrap();
    let store = open(&dir, config, 1).await.unwrap();
    assert_eq!(store.len(), 100);
    assert!(keys.iter().all(|k| store.get(k) == Some(&b"v"[..])));
}

#[tokio::test]
async fn large_partitions_round_trip_through_parallel_encoding() {
    let dir = memory_dir();
    let config = config(4, 1);
    let mut store = open(&dir, config, 0).await.unwrap();
    for i in 0..100_000u32 {
        store.put(&i.to_be_bytes(), &i.to_le_bytes());
    }
    let metrics = store.commit().await.unwrap();
    assert_eq!(metrics.partitions_written, 4);
    assert_eq!(metrics.snapshots_started, 4);
    assert_eq!(store.finish_snapshots().await.unwrap(), 4);
    store.put(&1u32.to_be_bytes(), b"one");
    let metrics = store.commit().await.unwrap();
    assert_eq!(metrics.snapshots_adopted, 4);
    let store = open(&dir, config, 2).await.unwrap();
    assert_eq!(store.len(), 100_000);
    assert_eq!(store.get(&1u32.to_be_bytes()), Some(&b"one"[..]));
    assert_eq!(
        store.get(&77_777u32.to_be_bytes()),
        Some(&77_777u32.to_le_bytes()[..])
    );
}

/// The engine runs queries on a multi-threaded runtime: the store and its
/// futures must be `Send`.
#[test]
fn the_store_and_its_futures_are_send() {
    fn send<T: Send>(_: &T) {}
    fn send_sync<T: Send + Sync>() {}
    send_sync::<StateStore>();
    send_sync::<StatePartition>();
    send(&StateStore::open(memory_dir(), schema(), config(1, 1), 0));
    #[allow(dead_code)]
    fn futures(store: &mut StateStore) {
        send(&store.purge(1));
        send(&store.commit());
    }
}

#[tokio::test]
async fn a_snapshot_of_an_abandoned_attempt_is_never_listed_and_is_purged() {
    let dir = memory_dir();
    let config = config(1, 2);
    let mut first = open(&dir, config, 0).await.unwrap();
    first.put(b"a", b"1");
    first.commit().await.unwrap();
    first.put(b"a", b"crashed");
    // Version 2 of an attempt whose batch then fails: its snapshot of
    // version 2 is written, never listed.
    assert_eq!(first.commit().await.unwrap().snapshots_started, 1);
    assert_eq!(first.finish_snapshots().await.unwrap(), 1);
    drop(first);

    // The batch is re-run from version 1 and snapshots version 2 again,
    // under its own name.
    let mut rerun = open(&dir, config, 1).await.unwrap();
    rerun.put(b"a", b"2");
    rerun.commit().await.unwrap();
    assert_eq!(rerun.finish_snapshots().await.unwrap(), 1);
    rerun.put(b"b", b"1");
    assert_eq!(rerun.commit().await.unwrap().snapshots_adopted, 1);

    let v3 = open(&dir, config, 3).await.unwrap();
    assert_eq!(v3.get(b"a"), Some(&b"2"[..]));
    assert_eq!(v3.get(b"b"), Some(&b"1"[..]));
    let snapshots = |files: Vec<String>| {
        files
            .into_iter()
            .filter(|f| f.starts_with("0/2-") && f.ends_with(".snapshot"))
            .count()
    };
    assert_eq!(snapshots(all_files(&dir).await), 2);
    // Purging drops the abandoned snapshot and keeps the listed one.
    rerun.purge(3).await.unwrap();
    assert_eq!(snapshots(all_files(&dir).await), 1);
    let v3 = open(&dir, config, 3).await.unwrap();
    assert_eq!(v3.get(b"a"), Some(&b"2"[..]));
}

#[tokio::test]
async fn a_failed_background_snapshot_fails_the_next_commit_naming_the_file() {
    let dir = memory_dir();
    let config = config(1, 2);
    let mut store = open(&dir, config, 0).await.unwrap();
    store.put(b"a", b"1");
    store.commit().await.unwrap();
    // Damaged before the snapshot of version 2 reads it.
    damage(&dir, "1.delta", |mut b| {
        b.truncate(b.len() / 2);
        b
    })
    .await;
    store.put(b"a", b"2");
    assert_eq!(store.commit().await.unwrap().snapshots_started, 1);
    let err = store.finish_snapshots().await.unwrap_err();
    assert!(err.to_string().contains("chk/state/0/1.delta"), "{err}");
    store.put(b"a", b"3");
    let err = store.commit().await.unwrap_err();
    assert!(err.to_string().contains("chk/state/0/1.delta"), "{err}");
    assert!(err.to_string().contains("truncated"), "{err}");
}

#[tokio::test]
async fn a_snapshot_of_a_partition_emptied_meanwhile_is_not_listed() {
    let dir = memory_dir();
    let config = config(1, 2);
    let mut store = open(&dir, config, 0).await.unwrap();
    store.put(b"a", b"1");
    store.commit().await.unwrap();
    store.put(b"b", b"1");
    assert_eq!(store.commit().await.unwrap().snapshots_started, 1);
    // The partition empties before the snapshot of version 2 is listed.
    store.remove(b"a");
    store.remove(b"b");
    store.commit().await.unwrap();
    store.finish_snapshots().await.unwrap();
    store.put(b"c", b"1");
    assert_eq!(store.commit().await.unwrap().snapshots_adopted, 0);
    let v4 = open(&dir, config, 4).await.unwrap();
    assert_eq!(v4.len(), 1);
    assert_eq!(v4.get(b"c"), Some(&b"1"[..]));
    assert_eq!(v4.get(b"a"), None);
}

/// The versions (from 3 on) at which a one-partition store with snapshot
/// interval 2 and `max` as the maximum interval starts a snapshot, when
/// version 1 writes 100 keys, version 2 is snapshotted and every later
/// version changes `per_version` keys.
async fn snapshot_versions(max: u64, per_version: u32) -> Vec<u64> {
    let dir = memory_dir();
    let config = StateStoreConfig {
        max_snapshot_interval: NonZeroU64::new(max).unwrap(),
        ..config(1, 2)
    };
    let mut store = open(&dir, config, 0).await.unwrap();
    for i in 0..100u32 {
        store.put(&i.to_be_bytes(), b"v1");
    }
    assert_eq!(store.commit().await.unwrap().snapshots_started, 0);
    store.put(&0u32.to_be_bytes(), b"v2");
    assert_eq!(store.commit().await.unwrap().snapshots_started, 1);
    store.finish_snapshots().await.unwrap();
    let mut started = Vec::new();
    for version in 3..=30u64 {
        for i in 0..per_version {
            store.put(&i.to_be_bytes(), &version.to_le_bytes());
        }
        let metrics = store.commit().await.unwrap();
        if metrics.snapshots_started > 0 {
            started.push(version);
        }
        store.finish_snapshots().await.unwrap();
    }
    started
}

#[tokio::test]
async fn a_large_partition_is_snapshotted_once_its_deltas_are_worth_it() {
    // One changed key per version: the deltas hold a tenth of the 100-row
    // snapshot after ten versions.
    assert_eq!(snapshot_versions(100, 1).await, vec![12, 22]);
    // ... unless the chain reaches the maximum interval first.
    assert_eq!(
        snapshot_versions(4, 1).await,
        vec![6, 10, 14, 18, 22, 26, 30]
    );
    // Ten changed keys per version are a tenth of the partition at once:
    // every snapshot interval, as for a small partition.
    assert_eq!(
        snapshot_versions(100, 10).await,
        vec![4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30]
    );
}

#[tokio::test]
async fn get_many_and_put_many_match_one_key_at_a_time() {
    // Below and above the size at which they use several threads.
    for n in [10u32, 10_000] {
        let dir = memory_dir();
        let mut many = open(&dir, config(8, 10), 0).await.unwrap();
        let mut single = StateStore::open(memory_dir(), schema(), config(8, 10), 0)
            .await
            .unwrap();
        let keys: Vec<Vec<u8>> = (0..n).map(|i| i.to_be_bytes().to_vec()).collect();
        // Every key twice: the later entry wins; odd keys expire.
        let mut entries: Vec<(&[u8], &[u8], Option<i64>)> = Vec::new();
        for key in &keys {
            entries.push((key, b"first", None));
        }
        for (i, key) in keys.iter().enumerate() {
            let ttl = (i % 2 == 1).then_some(i as i64);
            entries.push((key, key, ttl));
        }
        many.put_many(&entries);
        for &(key, value, ttl) in &entries {
            match ttl {
                Some(at) => single.put_with_ttl(key, value, at),
                None => single.put(key, value),
            }
        }
        let absent = b"absent".to_vec();
        let mut asked: Vec<&[u8]> = keys.iter().map(Vec::as_slice).rev().collect();
        asked.push(&absent);
        let got = many.get_many(&asked);
        let expected: Vec<Option<&[u8]>> = asked.iter().map(|k| single.get(k)).collect();
        assert_eq!(got, expected, "{n} keys");
        assert_eq!(got[0], Some(&keys[n as usize - 1][..]));
        assert_eq!(got[n as usize], None);
        assert_eq!(many.remove_expired(i64::MAX), n as usize / 2);
        assert_eq!(many.commit().await.unwrap().rows_updated, n as u64 / 2);
    }
}

#[tokio::test]
async fn take_expired_returns_each_due_entry_once_earliest_first_per_partition() {
    // Below and above the size at which partitions drain on several threads.
    for n in [10i64, 10_000] {
        let mut store = open(&memory_dir(), config(8, 10), 0).await.unwrap();
        for i in 0..n {
            store.put_with_ttl(&i.to_be_bytes(), &(i * 2).to_be_bytes(), i % 100);
        }
        let taken = store.take_expired(49);
        let due = (0..n).filter(|i| i % 100 <= 49).count();
        assert_eq!(taken.len(), due, "{n} keys");
        assert_eq!(store.len(), n as usize - due);
        let mut last: Option<(usize, i64)> = None;
        for (key, value) in taken.iter() {
            let i = i64::from_be_bytes(key.try_into().unwrap());
            assert!(i % 100 <= 49, "{i} was not due");
            assert_eq!(value[..], (i * 2).to_be_bytes());
            assert_eq!(store.get(key), None);
            // Partition by partition, earliest expiry first within one.
            let at = (store.partition_of(key), i % 100);
            if let Some(prev) = last {
                assert!(
                    prev.0 < at.0 || (prev.0 == at.0 && prev.1 <= at.1),
                    "{prev:?} then {at:?}"
                );
            }
            last = Some(at);
        }
        let mut keys: Vec<&[u8]> = taken.iter().map(|(k, _)| k).collect();
        keys.sort();
        keys.dedup();
        assert_eq!(keys.len(), due);
        assert!(store.take_expired(49).is_empty());
    }
}

#[tokio::test]
async fn remove_expired_with_shows_what_take_expired_returns_and_commits_the_same() {
    // Two stores given the same entries: one partition drained with
    // `take_expired`, the other with `remove_expired_with`; both see the
    // same entries in the same order, and commit the same delta.
    let (dir_a, dir_b) = (memory_dir(), memory_dir());
    let mut a = open(&dir_a, config(4, 10), 0).await.unwrap();
    let mut b = open(&dir_b, config(4, 10), 0).await.unwrap();
    for store in [&mut a, &mut b] {
        for i in 0..500i64 {
            store.put_with_ttl(&i.to_be_bytes(), &(i * 3).to_be_bytes(), (i * 7) % 60);
        }
        store.put(b"forever", b"kept");
        store.commit().await.unwrap();
        // Added after the commit and due: its removal cancels its change.
        store.put_with_ttl(b"late", b"gone", 0);
    }
    for (pa, pb) in a.partitions_mut().iter_mut().zip(b.partitions_mut()) {
        let taken = pa.take_expired(29);
        let mut seen = Vec::new();
        let count = pb.remove_expired_with(29, |k, v| seen.push((k.to_vec(), v.to_vec())));
        assert_eq!(count, taken.len());
        assert_eq!(seen, taken.to_vec());
        assert_eq!(pa.len(), pb.len());
        assert_eq!(
            pb.remove_expired_with(29, |_, _| panic!("drained twice")),
            0
        );
    }
    assert_eq!(b.get(b"late"), None);
    assert_eq!(b.get(b"forever"), Some(&b"kept"[..]));
    let (ca, cb) = (a.commit().await.unwrap(), b.commit().await.unwrap());
    assert_eq!(
        (ca.rows_updated, ca.rows_removed, a.len()),
        (cb.rows_updated, cb.rows_removed, b.len())
    );
    assert_eq!(
        cb.rows_removed,
        (0..500).filter(|i| (i * 7) % 60 <= 29).count() as u64
    );
    assert_eq!(
        cb.rows_updated, 0,
        "the late entry's put and removal cancel out"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overdue_snapshot_does_not_wait_for_idle_time() {
    // The maintenance thread gets no time (here: it is held by a job
    // that waits for the end of the test; dropping `release`, even on a
    // panic, lets it go).
    let (release, held) = std::sync::mpsc::channel::<()>();
    let holding = maintenance::run(move || {
        let _ = held.recv();
    });
    let dir = memory_dir();
    let config = StateStoreConfig {
        max_snapshot_interval: NonZeroU64::new(2).unwrap(),
        ..config(1, 1)
    };
    let mut store = open(&dir, config, 0).await.unwrap();
    let mut model = Model::new();
    let mut adopted_at = None;
    for version in 1..=200u64 {
        let key = format!("k{version}").into_bytes();
        store.put(&key, b"v");
        model.insert(key, (b"v".to_vec(), None));
        let commit = store.commit().await.unwrap();
        // Version 1 starts a snapshot that waits for idle time; at four
        // deltas (twice the maximum interval) one starts at a normal
        // priority, and a later commit lists it.
        assert!(commit.snapshots_started <= 1, "v{version}");
        if commit.snapshots_adopted > 0 {
            adopted_at = Some(version);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let adopted_at = adopted_at.expect("the overdue snapshot is listed");
    let snapshot = store.chains[0].snapshot.expect("a snapshot");
    assert_eq!(snapshot.version, 4, "adopted at v{adopted_at}");
    assert_matches(
        &open(&dir, config, adopted_at).await.unwrap(),
        &model,
        "with the overdue snapshot",
    );

    // Once the held snapshot runs, it replaces nothing: the chain no
    // longer starts with its files.
    drop(release);
    holding.await.unwrap();
    store.finish_snapshots().await.unwrap();
    store.put(b"last", b"v");
    model.insert(b"last".to_vec(), (b"v".to_vec(), None));
    store.commit().await.unwrap();
    assert_eq!(store.chains[0].snapshot.unwrap().version, 4);
    assert_matches(
        &open(&dir, config, store.version()).await.unwrap(),
        &model,
        "after the held snapshot",
    );
}

/// A store that an operator adds to a query that already ran is created
/// empty at the running version, commits on from there, and reads back at
/// every version from its creation on; `open` still refuses a missing
/// store at a later version.
#[tokio::test]
async fn a_store_created_at_a_later_version_starts_empty_there() {
    let dir = memory_dir();
    assert!(matches!(
        open(&dir, config(2, 10), 5).await,
        Err(StateError::Corrupt { .. })
    ));
    let (mut store, old) = StateStore::open_evolving(dir.clone(), schema(), config(2, 10), 5)
        .await
        .unwrap();
    assert!(old.is_none());
    assert!(store.is_empty());
    store.put(b"a", b"1");
    store.commit().await.unwrap();
    let reopened = open(&dir, config(2, 10), 6).await.unwrap();
    assert_eq!(reopened.get(b"a"), Some(&b"1"[..]));
    assert!(open(&dir, config(2, 10), 5).await.unwrap().is_empty());
    assert_eq!(StateStore::read_entries(&dir, 5).await.unwrap().len(), 0);
    assert_eq!(StateStore::read_entries(&dir, 6).await.unwrap().len(), 1);
}

/// A new value layout: opened in the old one, rewritten, recorded from the
/// next version on. The old versions keep their layout (the earlier form
/// of the operator still opens them, and its commit takes the old layout
/// back); the key layout must not change.
#[tokio::test]
async fn the_value_layout_changes_from_a_version_on() {
    let dir = memory_dir();
    let old_schema = schema();
    let mut store = open(&dir, config(2, 10), 0).await.unwrap();
    store.put(b"a", b"old");
    store.commit().await.unwrap();

    let new_schema = schema_with(("symbol", DataType::Utf8), ("total", DataType::Float64));
    let (mut store, old) =
        StateStore::open_evolving(dir.clone(), new_schema.clone(), config(2, 10), 1)
            .await
            .unwrap();
    assert_eq!(old.as_deref(), Some(old_schema.value.as_ref()));
    assert_eq!(store.schema().value, old_schema.value);
    store.put(b"a", b"new");
    store.set_value_schema(Arc::clone(&new_schema.value));
    store.commit().await.unwrap();

    // Version 2 is in the new layout, version 1 in the old.
    let (store, old) = StateStore::open_evolving(dir.clone(), new_schema.clone(), config(2, 10), 2)
        .await
        .unwrap();
    assert!(old.is_none());
    assert_eq!(store.get(b"a"), Some(&b"new"[..]));
    assert!(matches!(
        open(&dir, config(2, 10), 2).await,
        Err(StateError::Incompatible { .. })
    ));
    let entries = StateStore::read_entries(&dir, 2).await.unwrap();
    assert_eq!(entries.schema.value, new_schema.value);
    let entries = StateStore::read_entries(&dir, 1).await.unwrap();
    assert_eq!(entries.schema.value, old_schema.value);

    // The earlier form reopens version 1 and commits version 2 again, in
    // its layout.
    let mut store = open(&dir, config(2, 10), 1).await.unwrap();
    store.put(b"a", b"again");
    store.commit().await.unwrap();
    let store = open(&dir, config(2, 10), 2).await.unwrap();
    assert_eq!(store.get(b"a"), Some(&b"again"[..]));

    // A changed key layout is refused as by open.
    let other_key = schema_with(("id", DataType::Int64), ("sum", DataType::Int64));
    assert!(matches!(
        StateStore::open_evolving(dir.clone(), other_key, config(2, 10), 2).await,
        Err(StateError::Incompatible { .. })
    ));
}
