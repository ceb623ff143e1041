//! Deterministic workloads shared by the benchmarks and the tour: a
//! xorshift PRNG, a Zipf sampler, pre-generated key streams (Zipf, loops,
//! a hot set broken by one-shot scans) and readers for the public block
//! traces in `/work/shared/cache-traces/` (see `SOURCES.md` there).
//!
//! Everything here is seeded by the caller, so two runs (and the three caches
//! inside one run) see exactly the same requests. Keys are `u64` ranks:
//! `0` is the most popular key of a Zipf stream.

use std::{
    fmt,
    io::{self, BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

/// Bit set on a key of a [`mixed_stream`] when the operation is an insert.
pub(crate) const INSERT_FLAG: u64 = 1 << 63;

/// xorshift64* (Vigna): fast, tiny, good enough to drive benchmarks.
#[derive(Clone, Debug)]
pub(crate) struct XorShift(u64);

impl XorShift {
    /// A generator whose stream depends only on `seed` (any value, even 0).
    pub(crate) fn new(seed: u64) -> Self {
        // One splitmix64 step spreads similar seeds apart and avoids state 0.
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        XorShift((z ^ (z >> 31)) | 1)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `[0, 1)`.
    pub(crate) fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in `0..n` (multiply-shift; the bias is negligible here).
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }
}

/// Zipf(s) over ranks `0..n`: `P(rank k) ∝ 1 / (k + 1)^s`.
///
/// Exact inverse-CDF sampling. A guide table maps each of `GUIDE` equal
/// slices of `[0, 1)` to the range of ranks whose CDF crosses it, so a sample
/// is one table read plus a binary search over a few ranks (~20 ns for 1M
/// keys), instead of a search over the whole CDF.
#[derive(Debug)]
pub(crate) struct Zipf {
    cdf: Vec<f64>,
    guide: Vec<u32>,
}

const GUIDE: usize = 1 << 16;

impl Zipf {
    pub(crate) fn new(n: u64, s: f64) -> Self {
        assert!(
            n > 0 && n <= u64::from(u32::MAX),
            "Zipf needs 1..=u32::MAX ranks"
        );
        let mut cdf = Vec::with_capacity(n as usize);
        let mut total = 0.0;
        for k in 1..=n {
            total += (k as f64).powf(-s);
            cdf.push(total);
        }
        for c in &mut cdf {
            *c /= total;
        }
        *cdf.last_mut().expect("n > 0") = 1.0;
        // guide[i] = first rank whose CDF exceeds i / GUIDE.
        let guide = (0..=GUIDE)
            .map(|i| {
                let edge = i as f64 / GUIDE as f64;
                cdf.partition_point(|&c| c <= edge).min(cdf.len() - 1) as u32
            })
            .collect();
        Zipf { cdf, guide }
    }

    pub(crate) fn sample(&self, rng: &mut XorShift) -> u64 {
        let u = rng.next_f64();
        let slice = (u * GUIDE as f64) as usize;
        let lo = self.guide[slice] as usize;
        let hi = self.guide[slice + 1] as usize;
        // The answer is the first rank in lo..=hi whose CDF exceeds u.
        (lo + self.cdf[lo..=hi].partition_point(|&c| c <= u)) as u64
    }
}

/// `len` Zipf(`s`) keys over `0..n`, offset by `base`.
pub(crate) fn zipf_stream(n: u64, s: f64, len: usize, seed: u64, base: u64) -> Vec<u64> {
    let zipf = Zipf::new(n, s);
    let mut rng = XorShift::new(seed);
    (0..len).map(|_| base + zipf.sample(&mut rng)).collect()
}

/// `len` operations on Zipf(`s`) keys over `0..n`: a fraction
/// `insert_share` of them carry [`INSERT_FLAG`] (insert), the rest are
/// reads (get, insert on miss).
pub(crate) fn mixed_stream(n: u64, s: f64, len: usize, seed: u64, insert_share: f64) -> Vec<u64> {
    let zipf = Zipf::new(n, s);
    let mut rng = XorShift::new(seed);
    let mut ops = XorShift::new(seed ^ 0x005E_ED0F_0095);
    (0..len)
        .map(|_| {
            let key = zipf.sample(&mut rng);
            if ops.next_f64() < insert_share {
                key | INSERT_FLAG
            } else {
                key
            }
        })
        .collect()
}

/// Keys `0..period` in order, over and over, `len` requests in all: the
/// classic pattern that defeats LRU when `period` exceeds the capacity.
pub(crate) fn loop_stream(period: u64, len: usize) -> Vec<u64> {
    (0..len as u64).map(|i| i % period).collect()
}

/// A hot set of `hot` keys read uniformly, `hot_run` requests at a time,
/// each run followed by a scan of `scan_len` keys never seen before nor
/// again; `len` requests in all. A scan-resistant policy keeps the hot set
/// through the scans (best hit ratio about `hot_run / (hot_run + scan_len)`).
pub(crate) fn hot_scan_stream(
    hot: u64,
    hot_run: usize,
    scan_len: usize,
    len: usize,
    seed: u64,
) -> Vec<u64> {
    let mut rng = XorShift::new(seed);
    let mut next_scan_key = 1u64 << 40;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        out.extend((0..hot_run).map(|_| rng.below(hot)));
        out.extend((0..scan_len as u64).map(|i| next_scan_key + i));
        next_scan_key += scan_len as u64;
    }
    out.truncate(len);
    out
}

/// Where the public traces live unless told otherwise.
pub(crate) const DEFAULT_TRACE_DIR: &str = "/work/shared/cache-traces";

/// The trace directory: the first command-line argument that is not a
/// flag (cargo bench passes `--bench`), else `$LARDER_TRACES`, else
/// [`DEFAULT_TRACE_DIR`].
pub(crate) fn trace_dir() -> PathBuf {
    std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .or_else(|| std::env::var("LARDER_TRACES").ok())
        .map_or_else(|| PathBuf::from(DEFAULT_TRACE_DIR), PathBuf::from)
}

/// Why a trace could not be read.
#[derive(Debug)]
pub(crate) enum TraceError {
    /// The decompressor (`zstd`, `gzip`) is not installed.
    MissingTool(&'static str),
    /// The file is missing or unreadable, or the tool failed.
    Io(io::Error),
}

impl fmt::Display for TraceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TraceError::MissingTool(tool) => write!(
                f,
                "`{tool}` is not installed (needed to decompress the trace)"
            ),
            TraceError::Io(e) => write!(f, "{e}"),
        }
    }
}

/// Reads up to `limit` block requests from a trace file, by extension:
///
/// - ARC `*.lis.zst` (via `zstd -dc`): lines `start count _ _`, each
///   touching blocks `start .. start + count`;
/// - LIRS `*.trace.gz` (via `gzip -dc`): one block per line, `*` lines skipped.
pub(crate) fn read_trace(path: &Path, limit: usize) -> Result<Vec<u64>, TraceError> {
    let name = path.to_string_lossy();
    let (tool, arc) = if name.ends_with(".lis.zst") {
        ("zstd", true)
    } else if name.ends_with(".trace.gz") {
        ("gzip", false)
    } else {
        return Err(TraceError::Io(io::Error::other(format!(
            "unknown trace format: {name}"
        ))));
    };
    if !path.is_file() {
        return Err(TraceError::Io(io::Error::new(
            io::ErrorKind::NotFound,
            format!("{name} not found"),
        )));
    }
    let mut child = match Command::new(tool)
        .arg("-dc")
        .arg(path)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
    {
        Ok(child) => child,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(TraceError::MissingTool(tool)),
        Err(e) => return Err(TraceError::Io(e)),
    };
    let stdout = child.stdout.take().expect("stdout is piped");
    let mut keys = Vec::new();
    let bad = |line: &str| TraceError::Io(io::Error::other(format!("{name}: bad line {line:?}")));
    for line in BufReader::new(stdout).lines() {
        let line = line.map_err(TraceError::Io)?;
        let line = line.trim();
        if line.is_empty() || line.starts_with('*') {
            continue;
        }
        let mut fields = line.split_ascii_whitespace().map(str::parse::<u64>);
        let start = fields
            .next()
            .and_then(Result::ok)
            .ok_or_else(|| bad(line))?;
        let count = if arc {
            fields
                .next()
                .and_then(Result::ok)
                .ok_or_else(|| bad(line))?
        } else {
            1
        };
        let room = (limit - keys.len()) as u64;
        keys.extend(start..start + count.min(room));
        if keys.len() >= limit {
            // Stop the decompressor early; its exit status then means nothing.
            let _ = child.kill();
            let _ = child.wait();
            return Ok(keys);
        }
    }
    let status = child.wait().map_err(TraceError::Io)?;
    if !status.success() {
        return Err(TraceError::Io(io::Error::other(format!(
            "`{tool} -dc {name}` failed: {status}"
        ))));
    }
    Ok(keys)
}
