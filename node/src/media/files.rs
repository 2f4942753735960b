//! The blocking side of attachments: sealing a file, reading sealed chunks, and the writer that
//! verifies, decrypts and writes a download. Everything here runs on blocking threads, never on
//! the driver.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::Receiver;

use kith_core::media::{Layout, Sealer};
use kith_protocol::MediaId;
use kith_protocol::content::MediaManifest;
use kith_protocol::limits::MAX_FILE_NAME_BYTES;
use tokio::sync::mpsc::Sender;

use super::store::{IncomingState, MediaStore, bit, count, set_bit};
use super::{FileError, MediaFailure, Work};

/// Verified chunks written between two syncs of a download (and of its progress record).
pub const CHECKPOINT_CHUNKS: u32 = 16;

/// Most verified chunks a download's writer runs ahead of its checkpoints: with this many
/// written and not yet handed to a checkpoint, the writer waits for the one in progress. A
/// process killed mid-download fetches again at most the chunks in flight, those of the
/// checkpoint in progress and those not yet handed to one: fewer than
/// [`PARALLEL_CHUNKS`](super::PARALLEL_CHUNKS) + 2 × `MAX_UNCHECKPOINTED`.
pub const MAX_UNCHECKPOINTED: u32 = 2 * CHECKPOINT_CHUNKS;

/// Makes a rename or a new file in `dir` durable.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Seals `source` into `sealed_dir/<media id>`: chunk after chunk (one chunk in memory), synced
/// and renamed into place before the manifest is returned.
pub(crate) fn seal_file(
    source: &Path,
    sealed_dir: &Path,
    chunk_size: u32,
    max_size: u64,
    caption: Option<String>,
) -> Result<(MediaManifest, PathBuf), MediaFailure> {
    let io = |e: io::Error| MediaFailure::Io(FileError::new(Some(source), e));
    let mut file = File::open(source).map_err(io)?;
    let meta = file.metadata().map_err(io)?;
    if !meta.is_file() {
        return Err(MediaFailure::NotAFile(source.to_owned()));
    }
    let size = meta.len();
    if size > max_size {
        return Err(MediaFailure::TooLarge { size, max: max_size });
    }
    // The media key comes from the operating system's generator, like every other key.
    let mut sealer = Sealer::new(&mut crate::profile::ProfileRng::default(), size, chunk_size)?;
    let layout = sealer.layout();
    fs::create_dir_all(sealed_dir).map_err(io)?;
    let name = sealer.media_id().to_string();
    let tmp = sealed_dir.join(format!("{name}.tmp"));
    let done = sealed_dir.join(&name);
    let result = (|| {
        let mut out = io::BufWriter::with_capacity(1 << 20, File::create(&tmp)?);
        let mut buf = vec![0u8; chunk_size as usize];
        for index in 0..layout.chunks() {
            let plain = buf.get_mut(..layout.plain_len(index)).unwrap_or_default();
            file.read_exact(plain)?;
            let sealed = sealer.seal_next(plain).map_err(io::Error::other)?;
            out.write_all(&sealed)?;
        }
        out.into_inner().map_err(io::IntoInnerError::into_error)?.sync_all()?;
        fs::rename(&tmp, &done)?;
        sync_dir(sealed_dir)
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(io(e));
    }
    let file_name = source
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "attachment".into());
    let mime = mime_guess::from_path(source).first_or_octet_stream().essence_str().to_owned();
    let mut manifest =
        sealer.finish(clip(&file_name, MAX_FILE_NAME_BYTES).to_owned(), mime, caption)?;
    // A preview for images (what the recipient sees before, or instead of, the download).
    manifest.thumbnail = super::thumbnail::make(source, &manifest.mime);
    Ok((manifest, done))
}

/// `s` cut to at most `max` bytes on a character boundary.
fn clip(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.get(..end).unwrap_or_default()
}

/// Reads `len` bytes at `offset` of a sealed file (into fresh capacity: no zeroing first).
pub(crate) fn read_at(path: &Path, offset: u64, len: usize) -> io::Result<Vec<u8>> {
    use std::io::{Seek, SeekFrom};
    let mut file = File::open(path)?;
    file.seek(SeekFrom::Start(offset))?;
    let mut buf = Vec::with_capacity(len);
    file.take(len as u64).read_to_end(&mut buf)?;
    if buf.len() != len {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "sealed file too short"));
    }
    Ok(buf)
}

/// A file name from the network made safe to create in the downloads directory: its last
/// path component, without control characters or a leading dot, never empty.
pub fn safe_file_name(name: &str, media: &MediaId) -> String {
    let last = name.rsplit(['/', '\\']).next().unwrap_or_default();
    // Control characters become `_`; hidden formatting characters (the right-to-left override
    // that makes `a\u{202e}fdp.exe` show as `aexe.pdf`, byte-order marks, zero-width
    // characters) are dropped.
    let cleaned: String = last
        .chars()
        .filter(|c| !kith_core::text::is_hidden_format(*c))
        .map(|c| if c.is_control() || c == ':' { '_' } else { c })
        .collect();
    let cleaned = cleaned.trim().trim_start_matches('.');
    let cleaned = clip(cleaned, MAX_FILE_NAME_BYTES);
    if cleaned.is_empty() {
        format!("attachment-{}", &media.to_string()[..8])
    } else {
        cleaned.to_owned()
    }
}

/// `dir/name`, or `dir/stem (n).ext` if that exists, never longer than the file-name limit
/// (the stem is shortened to make room for the number).
fn unique_path(dir: &Path, name: &str) -> PathBuf {
    let candidate = dir.join(name);
    if !candidate.exists() {
        return candidate;
    }
    let (stem, ext) = match name.rsplit_once('.') {
        Some((stem, ext)) if !stem.is_empty() && ext.len() <= 16 => (stem, format!(".{ext}")),
        _ => (name, String::new()),
    };
    (1u64..)
        .map(|n| {
            let suffix = format!(" ({n}){ext}");
            let stem = clip(stem, MAX_FILE_NAME_BYTES.saturating_sub(suffix.len()));
            dir.join(format!("{stem}{suffix}"))
        })
        .find(|p| !p.exists())
        .unwrap_or(candidate)
}

/// Where a download's verified plaintext goes until it is complete (in the downloads
/// directory, so that the final rename stays on one filesystem).
pub(crate) fn partial_path(downloads: &Path, media: &MediaId) -> PathBuf {
    downloads.join(format!(".kith-{media}.part"))
}

/// A verified, decrypted chunk for the writer.
pub(crate) struct Incoming {
    pub(crate) index: u32,
    pub(crate) plain: Vec<u8>,
}

/// The writer of one download: writes each verified chunk in place, syncs and
/// records progress every [`CHECKPOINT_CHUNKS`], and when every chunk is there renames the file
/// into the downloads directory. Runs until the download completes or its channel closes.
pub(crate) struct Writer {
    pub(crate) media: MediaId,
    pub(crate) manifest: Arc<MediaManifest>,
    pub(crate) layout: Layout,
    pub(crate) downloads: PathBuf,
    pub(crate) store: MediaStore,
    pub(crate) done: Vec<u8>,
    pub(crate) work: Sender<Work>,
}

impl Writer {
    pub(crate) fn run(mut self, chunks: Receiver<Incoming>) {
        if let Err(e) = self.write_all(chunks) {
            let _ = self.work.blocking_send(Work::Failed {
                media: self.media,
                failure: MediaFailure::Io(FileError::new(Some(&self.downloads), e)),
            });
        }
    }

    fn write_all(&mut self, chunks: Receiver<Incoming>) -> io::Result<()> {
        let path = partial_path(&self.downloads, &self.media);
        fs::create_dir_all(&self.downloads)?;
        let file = OpenOptions::new().create(true).truncate(false).write(true).open(&path)?;
        let mut have = count(&self.done, self.layout.chunks());
        let mut written = self.done.clone();
        let this = &*self;
        // Checkpoints run beside the writes: a snapshot of what is written, then a sync (which
        // covers every write made before it), then the record. A snapshot is handed over only
        // to an idle checkpoint thread (the channel holds none), so writing waits for a sync
        // only when it has run MAX_UNCHECKPOINTED chunks ahead of the checkpoints.
        let finished = std::thread::scope(|scope| -> io::Result<bool> {
            let (checkpoints, snapshots) = std::sync::mpsc::sync_channel::<Vec<u8>>(0);
            let file = &file;
            let syncer = scope.spawn(move || -> io::Result<()> {
                for snapshot in snapshots {
                    file.sync_data()?;
                    this.save(&snapshot, None)?;
                }
                Ok(())
            });
            let mut unsynced = 0u32;
            let mut stopped = false;
            while have < this.layout.chunks() {
                let Ok(chunk) = chunks.recv() else {
                    stopped = true; // the node stops: keep what is written
                    break;
                };
                if bit(&written, chunk.index) {
                    // Fetched twice (a retry raced the answer): free its slot, count nothing.
                    let _ = this
                        .work
                        .blocking_send(Work::ChunkWritten { media: this.media, bytes: None });
                    continue;
                }
                file.write_all_at(&chunk.plain, this.layout.offset(chunk.index))?;
                set_bit(&mut written, chunk.index);
                have += 1;
                unsynced += 1;
                let bytes = Some(chunk.plain.len() as u64);
                let _ = this.work.blocking_send(Work::ChunkWritten { media: this.media, bytes });
                if unsynced < CHECKPOINT_CHUNKS || have >= this.layout.chunks() {
                    continue;
                }
                let handed = if unsynced >= MAX_UNCHECKPOINTED {
                    checkpoints.send(written.clone()).is_ok()
                } else {
                    // A busy checkpoint thread takes the next snapshot instead.
                    checkpoints.try_send(written.clone()).is_ok()
                };
                if handed {
                    unsynced = 0;
                }
            }
            if stopped && unsynced > 0 {
                let _ = checkpoints.send(written.clone());
            }
            drop(checkpoints);
            syncer.join().map_err(|_| io::Error::other("the checkpoint thread panicked"))??;
            Ok(!stopped)
        })?;
        if !finished {
            return Ok(());
        }
        file.set_len(self.layout.size())?;
        file.sync_all()?;
        drop(file);
        let name = safe_file_name(&self.manifest.name, &self.media);
        let target = unique_path(&self.downloads, &name);
        fs::rename(&path, &target)?;
        sync_dir(&self.downloads)?;
        self.save(&written, Some(IncomingState::Complete(target.clone())))?;
        let _ = self.work.blocking_send(Work::Completed { media: self.media, path: target });
        Ok(())
    }

    /// Records `done` (and a new state) for this download, durably.
    fn save(&self, done: &[u8], state: Option<IncomingState>) -> io::Result<()> {
        let other = |e: super::store::MediaStoreError| io::Error::other(e.to_string());
        let Some(mut record) = self.store.incoming_record(&self.media).map_err(other)? else {
            return Ok(());
        };
        record.done = done.to_vec();
        if let Some(state) = state {
            record.state = state;
        }
        self.store.put_incoming(&self.media, &record).map_err(other)?;
        self.store.flush().map_err(other)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn names_from_the_network_cannot_leave_the_downloads_directory() {
        let media = MediaId([0xab; 16]);
        assert_eq!(safe_file_name("../../etc/passwd", &media), "passwd");
        assert_eq!(safe_file_name("..\\..\\boot.ini", &media), "boot.ini");
        assert_eq!(safe_file_name(".bashrc", &media), "bashrc");
        assert_eq!(safe_file_name("a\nb\u{0}c:d", &media), "a_b_c_d");
        assert_eq!(safe_file_name("..", &media), "attachment-abababab");
        assert_eq!(safe_file_name("dir/", &media), "attachment-abababab");
        assert_eq!(safe_file_name("photo.jpg", &media), "photo.jpg");
    }

    /// Issue 14: names that spoof (right-to-left override, byte-order mark, zero-width
    /// characters) lose the hidden characters; a 255-byte name that collides stays within the
    /// file-name limit.
    #[test]
    fn names_cannot_spoof_or_outgrow_the_limit() {
        let media = MediaId([0xab; 16]);
        assert_eq!(safe_file_name("invoice\u{202e}fdp.exe", &media), "invoicefdp.exe");
        assert_eq!(safe_file_name("\u{feff}a\u{200b}b.txt", &media), "ab.txt");
        assert_eq!(safe_file_name(&"é".repeat(200), &media).len(), 254);
        let dir = tempfile::tempdir().unwrap();
        let long = format!("{}.txt", "x".repeat(MAX_FILE_NAME_BYTES - 4));
        assert_eq!(long.len(), MAX_FILE_NAME_BYTES);
        fs::write(dir.path().join(&long), b"x").unwrap();
        let second = unique_path(dir.path(), &long);
        let second_name = second.file_name().unwrap().to_str().unwrap();
        assert!(second_name.len() <= MAX_FILE_NAME_BYTES, "{}", second_name.len());
        assert!(second_name.ends_with(" (1).txt"));
        fs::write(&second, b"x").unwrap();
        assert!(unique_path(dir.path(), &long).to_str().unwrap().ends_with(" (2).txt"));
    }

    #[test]
    fn a_taken_name_gets_a_number() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(unique_path(dir.path(), "a.txt"), dir.path().join("a.txt"));
        fs::write(dir.path().join("a.txt"), b"x").unwrap();
        fs::write(dir.path().join("a (1).txt"), b"x").unwrap();
        assert_eq!(unique_path(dir.path(), "a.txt"), dir.path().join("a (2).txt"));
    }
}
