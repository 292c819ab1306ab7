//! [`Backend::logs`](crate::backend::Backend::logs) on the local backend: the log files the
//! workload processes write (`process.rs`: stdout and stderr appended to `process.log` in the
//! deployment directory for replica 0, in `replicas/<i>/` for the others).
//!
//! The tail of each file is read back from its end (at most [`MAX_TAIL_BYTES`]). Following
//! polls the files every [`POLL`] for what was appended (a file that shrank or was replaced is
//! read again from its start), picks up replicas that appear, and ends once the deployment
//! directory is gone (undeployed). Files are read off the async runtime; the stream holds no
//! file open between rounds, so dropping it (the client went away) leaves nothing behind.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::error::{Error, Result};
use crate::backend::logs::{last_lines, split_lines, LogLine, LogOptions, LogStream, MAX_TAIL_BYTES};

/// How often a follow looks for new lines.
const POLL: Duration = Duration::from_millis(200);
/// The log file of each process, in its directory.
const LOG_FILE: &str = "process.log";
/// Most bytes read from one file in one round (a burst is sent over several rounds).
const CHUNK: u64 = 1024 * 1024;

/// The log files of the deployment in `dir` that exist, replica 0 first, then by index.
fn sources(dir: &Path) -> Vec<(String, PathBuf)> {
    let mut out = Vec::new();
    let own = dir.join(LOG_FILE);
    if own.is_file() {
        out.push(("replica 0".to_string(), own));
    }
    let mut extras: Vec<(u32, PathBuf)> = std::fs::read_dir(dir.join("replicas"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let index = e.file_name().to_str()?.parse::<u32>().ok().filter(|i| *i > 0)?;
            let path = e.path().join(LOG_FILE);
            path.is_file().then_some((index, path))
        })
        .collect();
    extras.sort();
    out.extend(extras.into_iter().map(|(i, path)| (format!("replica {i}"), path)));
    out
}

/// Where the last `n` lines of a file of `len` bytes start (`None`: as far back as
/// [`MAX_TAIL_BYTES`] allows). A final line break ends the last line rather than starting one.
fn tail_start(file: &mut File, len: u64, n: Option<u32>) -> std::io::Result<u64> {
    let floor = len.saturating_sub(MAX_TAIL_BYTES);
    let Some(n) = n else { return Ok(floor) };
    if n == 0 {
        return Ok(len);
    }
    let mut need = u64::from(n);
    let mut buf = vec![0u8; 64 * 1024];
    let mut pos = len;
    while pos > floor {
        let size = (pos - floor).min(buf.len() as u64) as usize;
        pos -= size as u64;
        file.seek(SeekFrom::Start(pos))?;
        file.read_exact(&mut buf[..size])?;
        for i in (0..size).rev() {
            let at = pos + i as u64;
            if buf[i] == b'\n' && at + 1 != len {
                need -= 1;
                if need == 0 {
                    return Ok(at + 1);
                }
            }
        }
    }
    Ok(floor)
}

/// One log file being read.
#[derive(Debug)]
struct Source {
    name: String,
    path: PathBuf,
    /// Bytes read so far.
    offset: u64,
    /// Which file that was (a replaced one is read from its start).
    inode: u64,
    /// An unfinished last line.
    pending: Vec<u8>,
}

impl Source {
    fn new(name: String, path: PathBuf) -> Self {
        Source { name, path, offset: 0, inode: 0, pending: Vec::new() }
    }

    fn open(&self) -> Result<Option<(File, u64, u64)>> {
        match File::open(&self.path) {
            Ok(f) => {
                let meta = f.metadata().map_err(Error::io("read", &self.path))?;
                Ok(Some((f, meta.len(), meta.ino())))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io("open", &self.path)(e)),
        }
    }

    /// The last `n` lines; the offset is then the file's end. With `keep_unfinished`, an
    /// unfinished last line waits for its end (following); otherwise it is a line of its own.
    fn tail(&mut self, n: Option<u32>, keep_unfinished: bool) -> Result<Vec<String>> {
        let Some((mut f, len, inode)) = self.open()? else { return Ok(Vec::new()) };
        let read = |f: &mut File| -> std::io::Result<u64> {
            // An unfinished last line that waits is not one of the `n`: start one line earlier.
            let mut last = [0u8; 1];
            let open = len > 0 && {
                f.seek(SeekFrom::Start(len - 1))?;
                f.read_exact(&mut last)?;
                last[0] != b'\n'
            };
            let count = n.map(|n| if keep_unfinished && open { n.saturating_add(1) } else { n });
            tail_start(f, len, count)
        };
        let start = read(&mut f).map_err(Error::io("read", &self.path))?;
        let mut bytes = Vec::with_capacity((len - start) as usize);
        f.seek(SeekFrom::Start(start))
            .and_then(|_| f.by_ref().take(len - start).read_to_end(&mut bytes))
            .map_err(Error::io("read", &self.path))?;
        let floor = len.saturating_sub(MAX_TAIL_BYTES);
        if start == floor && floor > 0 {
            // Cut at MAX_TAIL_BYTES: the first line is only the end of one.
            let first = bytes.iter().position(|b| *b == b'\n').map_or(bytes.len(), |i| i + 1);
            bytes.drain(..first);
        }
        (self.offset, self.inode) = (len, inode);
        let mut lines = split_lines(&mut self.pending, &bytes);
        if !keep_unfinished && !self.pending.is_empty() {
            lines.push(String::from_utf8_lossy(&std::mem::take(&mut self.pending)).into_owned());
        }
        Ok(last_lines(lines, n))
    }

    /// What was appended since the last read (at most [`CHUNK`] bytes of it).
    fn appended(&mut self) -> Result<Vec<String>> {
        let Some((mut f, len, inode)) = self.open()? else {
            // Removed: a file written there again is a new one.
            (self.offset, self.pending) = (0, Vec::new());
            return Ok(Vec::new());
        };
        if inode != self.inode || len < self.offset {
            (self.offset, self.inode, self.pending) = (0, inode, Vec::new());
        }
        if len == self.offset {
            return Ok(Vec::new());
        }
        let mut bytes = Vec::new();
        f.seek(SeekFrom::Start(self.offset))
            .and_then(|_| f.take((len - self.offset).min(CHUNK)).read_to_end(&mut bytes))
            .map_err(Error::io("read", &self.path))?;
        self.offset += bytes.len() as u64;
        Ok(split_lines(&mut self.pending, &bytes))
    }
}

/// The reading state of one logs stream.
#[derive(Debug)]
struct Reader {
    dir: PathBuf,
    opts: LogOptions,
    sources: Vec<Source>,
    queue: VecDeque<LogLine>,
    started: bool,
    done: bool,
}

impl Reader {
    /// One look at every file: the tails first, then what was appended.
    fn round(&mut self) -> Result<()> {
        let first = !self.started;
        self.started = true;
        if !first && !self.dir.is_dir() {
            self.done = true;
            return Ok(());
        }
        for (name, path) in sources(&self.dir) {
            if !self.sources.iter().any(|s| s.path == path) {
                let mut source = Source::new(name, path);
                if first {
                    let lines = source.tail(self.opts.tail, self.opts.follow)?;
                    self.queue.extend(lines.into_iter().map(|l| LogLine::new(&source.name, l)));
                }
                // A file found later is a replica started since: read it from its start.
                self.sources.push(source);
            }
        }
        if first {
            self.done = !self.opts.follow;
            return Ok(());
        }
        for s in &mut self.sources {
            let lines = s.appended()?;
            self.queue.extend(lines.into_iter().map(|l| LogLine::new(&s.name, l)));
        }
        Ok(())
    }
}

/// The logs of the deployment whose directory is `dir` (see the module doc).
pub(super) fn stream(dir: PathBuf, opts: LogOptions) -> LogStream {
    let reader = Reader { dir, opts, sources: Vec::new(), queue: VecDeque::new(), started: false, done: false };
    Box::pin(futures::stream::unfold(Some(reader), |state| async move {
        let mut r = state?;
        loop {
            if let Some(line) = r.queue.pop_front() {
                return Some((Ok(line), Some(r)));
            }
            if r.done {
                return None;
            }
            if r.started {
                tokio::time::sleep(POLL).await;
            }
            let ran = tokio::task::spawn_blocking(move || {
                let result = r.round();
                (r, result)
            })
            .await;
            match ran {
                Ok((back, Ok(()))) => r = back,
                // An error ends the stream: its last item.
                Ok((_, Err(e))) => return Some((Err(e.into()), None)),
                Err(e) => return Some((Err(Error::Blocking(e).into()), None)),
            }
        }
    }))
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use futures::StreamExt;

    use super::*;

    fn lines_of(path: &Path, n: Option<u32>) -> Vec<String> {
        let mut s = Source::new("replica 0".into(), path.to_path_buf());
        s.tail(n, false).unwrap()
    }

    #[test]
    fn the_tail_is_the_last_lines_with_or_without_a_final_line_break() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(LOG_FILE);
        std::fs::write(&path, "a\nb\nc\n").unwrap();
        assert_eq!(lines_of(&path, Some(2)), ["b", "c"]);
        assert_eq!(lines_of(&path, Some(9)), ["a", "b", "c"]);
        assert!(lines_of(&path, Some(0)).is_empty());
        assert_eq!(lines_of(&path, None), ["a", "b", "c"]);
        std::fs::write(&path, "a\nb\nunfinished").unwrap();
        assert_eq!(lines_of(&path, Some(2)), ["b", "unfinished"]);
    }

    #[test]
    fn the_tail_of_a_long_file_is_found_from_its_end() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(LOG_FILE);
        let text: String = (0..20_000).map(|i| format!("line {i}\n")).collect();
        std::fs::write(&path, text).unwrap();
        assert_eq!(lines_of(&path, Some(3)), ["line 19997", "line 19998", "line 19999"]);
    }

    #[test]
    fn sources_are_replica_0_then_the_others_by_index() {
        let dir = tempfile::tempdir().unwrap();
        for i in ["10", "2", "x"] {
            std::fs::create_dir_all(dir.path().join("replicas").join(i)).unwrap();
            std::fs::write(dir.path().join("replicas").join(i).join(LOG_FILE), "").unwrap();
        }
        assert_eq!(sources(dir.path()).iter().map(|s| s.0.as_str()).collect::<Vec<_>>(), ["replica 2", "replica 10"]);
        std::fs::write(dir.path().join(LOG_FILE), "").unwrap();
        assert_eq!(sources(dir.path())[0].0, "replica 0");
    }

    async fn next(s: &mut LogStream) -> Option<crate::backend::Result<LogLine>> {
        tokio::time::timeout(Duration::from_secs(10), s.next()).await.expect("a line in time")
    }

    #[tokio::test]
    async fn a_follow_sends_the_tail_then_appended_lines_and_ends_when_the_deployment_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let deployment = dir.path().join("d");
        std::fs::create_dir_all(&deployment).unwrap();
        let path = deployment.join(LOG_FILE);
        std::fs::write(&path, "old 1\nold 2\npart").unwrap();
        let mut s = stream(deployment.clone(), LogOptions { follow: true, tail: Some(1) });
        assert_eq!(next(&mut s).await.unwrap().unwrap().line, "old 2");
        std::fs::OpenOptions::new().append(true).open(&path).unwrap().write_all(b"ial\nnew\n").unwrap();
        assert_eq!(next(&mut s).await.unwrap().unwrap().line, "partial");
        assert_eq!(next(&mut s).await.unwrap().unwrap(), LogLine::new("replica 0", "new"));
        std::fs::create_dir_all(deployment.join("replicas/1")).unwrap();
        std::fs::write(deployment.join("replicas/1").join(LOG_FILE), "from one\n").unwrap();
        assert_eq!(next(&mut s).await.unwrap().unwrap(), LogLine::new("replica 1", "from one"));
        std::fs::remove_dir_all(&deployment).unwrap();
        assert!(next(&mut s).await.is_none(), "the stream ends with the deployment");
    }
}
