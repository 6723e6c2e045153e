//! Where the data files a commit file lists live, and reading them back
//! checked against what the commit file recorded.

use std::collections::HashMap;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt, stream};
use object_store::path::Path;

use super::files::{FileId, FileKind};
use super::manifest::FileRef;
use crate::{CheckpointDir, Result};

/// Data files (or groups of parts of one shared file) fetched at once.
const FETCH_CONCURRENCY: usize = 32;

/// The path of `version`'s shared delta file: `<dir>/<version>.delta`.
pub(crate) fn shared_delta_path(dir: &CheckpointDir, version: u64) -> Path {
    dir.path(&FileKind::Delta.file_name(version, None))
}

/// The identity of partition `partition`'s data file of `kind` recorded as
/// `file`: a part of its version's shared delta file when `file` records
/// an offset, else a file of its own in the partition's directory.
pub(crate) fn locate(
    dir: &CheckpointDir,
    partition: usize,
    kind: FileKind,
    file: &FileRef,
) -> FileId {
    match file.offset {
        Some(offset) => FileId {
            path: shared_delta_path(dir, file.version),
            part: Some(offset..offset + file.bytes),
            kind,
            partition,
            version: file.version,
        },
        None => own_file(dir, partition, kind, file.version, file.tag),
    }
}

/// The identity of a data file of its own in partition `partition`'s
/// directory: `<dir>/<partition>/<version>[-<tag>].<kind>`.
pub(crate) fn own_file(
    dir: &CheckpointDir,
    partition: usize,
    kind: FileKind,
    version: u64,
    tag: Option<u64>,
) -> FileId {
    FileId {
        path: dir
            .child(&partition.to_string())
            .path(&kind.file_name(version, tag)),
        part: None,
        kind,
        partition,
        version,
    }
}

/// Reads the data files `wanted` (each with its record in `commit_name`),
/// in order, checking each against its record: present, of the recorded
/// length, with the recorded CRC-32. The parts of one shared file are read
/// with one ranged read spanning them.
pub(crate) async fn fetch_all(
    dir: &CheckpointDir,
    wanted: &[(FileId, FileRef)],
    commit_name: &str,
) -> Result<Vec<Bytes>> {
    // Indices into `wanted`, by file, in the order first met.
    let mut groups: Vec<Vec<usize>> = Vec::new();
    let mut group_of: HashMap<&Path, usize> = HashMap::new();
    for (i, (id, _)) in wanted.iter().enumerate() {
        let g = *group_of.entry(&id.path).or_insert_with(|| {
            groups.push(Vec::new());
            groups.len() - 1
        });
        groups[g].push(i);
    }
    let fetched: Vec<Vec<(usize, Bytes)>> = stream::iter(groups)
        .map(|group| fetch_group(dir, wanted, group, commit_name))
        .buffered(FETCH_CONCURRENCY)
        .try_collect()
        .await?;
    let mut out: Vec<Option<Bytes>> = vec![None; wanted.len()];
    for (i, bytes) in fetched.into_iter().flatten() {
        out[i] = Some(bytes);
    }
    // Every index is in exactly one group.
    Ok(out
        .into_iter()
        .map(|b| b.expect("every wanted file was fetched"))
        .collect())
}

/// Reads the entries `group` of `wanted`, all in one file.
async fn fetch_group(
    dir: &CheckpointDir,
    wanted: &[(FileId, FileRef)],
    group: Vec<usize>,
    commit_name: &str,
) -> Result<Vec<(usize, Bytes)>> {
    let (first, _) = &wanted[group[0]];
    let missing = || {
        first.corrupt(format!(
            "missing, but listed by {commit_name} (deleted or lost?)"
        ))
    };
    let Some(span) = group
        .iter()
        .filter_map(|&i| wanted[i].0.part.clone())
        .reduce(|a, b| a.start.min(b.start)..a.end.max(b.end))
    else {
        // A file of its own.
        let file = &wanted[group[0]].1;
        let bytes = dir.get_bytes(&first.path).await?.ok_or_else(missing)?;
        let len = bytes.len() as u64;
        if len > file.bytes {
            return Err(first.corrupt(format!(
                "{len} bytes, but {commit_name} recorded {} (overwritten by another run?)",
                file.bytes
            )));
        }
        check(first, file, &bytes, commit_name)?;
        return Ok(group.into_iter().map(|i| (i, bytes.clone())).collect());
    };
    let (bytes, file_len) = dir
        .get_range(&first.path, span.clone())
        .await?
        .ok_or_else(missing)?;
    group
        .into_iter()
        .map(|i| {
            let (id, file) = &wanted[i];
            let part = id.part.clone().unwrap_or(span.clone());
            // What was read ends at the file's end or the span's.
            let read_to = span.start + bytes.len() as u64;
            if part.end > file_len.min(read_to) {
                return Err(id.corrupt(format!(
                    "truncated: the file has {file_len} bytes, but {commit_name} recorded this part up to byte {}",
                    part.end
                )));
            }
            let bytes = bytes.slice((part.start - span.start) as usize..(part.end - span.start) as usize);
            check(id, file, &bytes, commit_name)?;
            Ok((i, bytes))
        })
        .collect()
}

/// Checks `bytes`, read for `id`, against its record `file`: length (short
/// only: a part's file may hold more) and CRC-32.
fn check(id: &FileId, file: &FileRef, bytes: &[u8], commit_name: &str) -> Result<()> {
    let len = bytes.len() as u64;
    if len < file.bytes {
        return Err(id.corrupt(format!(
            "truncated: {len} bytes, but {commit_name} recorded {}",
            file.bytes
        )));
    }
    let crc = crc32fast::hash(bytes);
    if crc != file.crc32 {
        return Err(id.corrupt(format!(
            "checksum mismatch (recorded {:08x} in {commit_name}, computed {crc:08x})",
            file.crc32
        )));
    }
    Ok(())
}
