//! S3 and S3-compatible stores (Garage, MinIO, Ceph, R2, Wasabi, Aliyun OSS…) through
//! aws-sdk-s3. Credentials come from the standard AWS chain (environment, profile, instance
//! role). A small object goes up in one request with its SHA-256 as the
//! `x-amz-checksum-sha256` the server verifies, and as `sha256` metadata. A large one goes up
//! in parts, read once: each part with a CRC-32C the server verifies, the whole file's SHA-256
//! computed from the same reads (and kept as metadata when already known); re-runs recognise it
//! by that metadata or by its composite CRC-32C. A failed multipart upload is aborted; uploads
//! left by a run that died are aborted by the next one.
//!
//! STORAGE_CLASS applies to the data; manifests (the run's, the encrypted files') always stay
//! in STANDARD, so runs can be listed, checked by size and pruned even when the data sits in
//! GLACIER or DEEP_ARCHIVE. Objects in those classes are read only once thawed: [`S3::archived`]
//! tells which are (their class from the listing, their state from HeadObject's Restore
//! header), and `thaw` asks for readable copies (RestoreObject).

use std::io::Read;
use std::path::Path;
use std::time::Duration;

use aws_sdk_s3::Client;
use aws_sdk_s3::error::DisplayErrorContext;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{
    ChecksumAlgorithm, CompletedMultipartUpload, CompletedPart, Delete, ObjectIdentifier, StorageClass,
};
use base64::Engine;
use ncb_core::atomic::AtomicFile;
use ncb_core::hash::{HashWriter, sha256_file};
use ncb_core::params::{Params, Problem};
use ncb_core::progress::Progress;
use ncb_core::{Artifact, Error, IoContext, Result};
use sha2::{Digest, Sha256};

use crate::backend::{Archived, Backend, DELETING_MARK, FileInfo, RUN_MANIFEST, Thaw, deleting_mark_text};

/// What an upload task gives back: (part number, ETag, checksum), or why it failed.
type PartResult = std::result::Result<
    std::result::Result<
        (i32, Option<String>, String),
        aws_sdk_s3::error::SdkError<aws_sdk_s3::operation::upload_part::UploadPartError>,
    >,
    tokio::task::JoinError,
>;

pub const STORAGE_CLASSES: &[&str] = &[
    "STANDARD",
    "STANDARD_IA",
    "ONEZONE_IA",
    "INTELLIGENT_TIERING",
    "GLACIER",
    "GLACIER_IR",
    "DEEP_ARCHIVE",
    "REDUCED_REDUNDANCY",
];

/// Storage classes whose objects cannot be read until they are restored ("thawed") for a while.
pub const ARCHIVE_CLASSES: &[&str] = &["GLACIER", "DEEP_ARCHIVE"];

/// How long a thaw takes, for messages.
pub const THAW_TIMES: &str = "GLACIER: 3-5 h, DEEP_ARCHIVE: 12 h";

/// PART_SIZE_MB's range (S3 refuses parts under 5 MiB; memory is about UPLOAD_CONCURRENCY parts)
/// and UPLOAD_CONCURRENCY's.
const PART_SIZE_MB: (u64, u64) = (5, 512);
const CONCURRENCY: (u64, u64) = (1, 16);

/// PART_SIZE_MB (default 8) and UPLOAD_CONCURRENCY (default 4), refused out of their ranges.
pub fn tuning(p: &Params) -> std::result::Result<(u64, usize), Vec<Problem>> {
    let mut problems = Vec::new();
    let mut read = |key: &str, default: u64, (lo, hi): (u64, u64), unit: &str| {
        let Some(raw) = p.str(key) else { return default };
        let message = match raw.trim().parse::<u64>() {
            Ok(v) if (lo..=hi).contains(&v) => return v,
            Ok(v) => format!("{v} is out of range: {lo} to {hi}{unit}"),
            Err(_) => format!("'{raw}' is not a whole number from {lo} to {hi}"),
        };
        problems.push(Problem { key: key.into(), message });
        default
    };
    let part = read("PART_SIZE_MB", 8, PART_SIZE_MB, " (MiB per part; S3 refuses parts under 5 MiB)");
    let concurrency = read("UPLOAD_CONCURRENCY", 4, CONCURRENCY, " (requests in flight)");
    if problems.is_empty() { Ok((part, usize::try_from(concurrency).unwrap_or(4))) } else { Err(problems) }
}

/// The environment variable that sets how long one attempt of a request may take.
pub const ATTEMPT_TIMEOUT_ENV: &str = "NCB_S3_ATTEMPT_TIMEOUT";

/// One attempt of a request (sending it and getting the answer's headers; a listing's whole
/// answer) is given up after this long and retried: a server that stalls ends the attempt, not
/// the night. Default 300 s; NCB_S3_ATTEMPT_TIMEOUT sets it in seconds (1-86400): raise it for
/// large parts on a slow uplink. A body (upload or download) that moves no byte for 5 s is
/// failed sooner by the SDK's stalled-stream protection.
fn attempt_timeout(raw: Option<&str>) -> Result<Duration> {
    let Some(raw) = raw else { return Ok(Duration::from_secs(300)) };
    match raw.trim().parse::<u64>() {
        Ok(s) if (1..=86_400).contains(&s) => Ok(Duration::from_secs(s)),
        _ => Err(Error::usage(format!("{ATTEMPT_TIMEOUT_ENV}='{raw}': expected seconds, 1 to 86400"))),
    }
}

/// Attempts per request (the first and its retries, with backoff): 5, or the standard
/// AWS_MAX_ATTEMPTS of the environment (1-20).
fn max_attempts(raw: Option<&str>) -> Result<u32> {
    let Some(raw) = raw else { return Ok(5) };
    match raw.trim().parse::<u32>() {
        Ok(n) if (1..=20).contains(&n) => Ok(n),
        _ => Err(Error::usage(format!("AWS_MAX_ATTEMPTS='{raw}': expected attempts, 1 to 20"))),
    }
}

/// What the S3 parameters need beyond the parameter table (storage's `validate`).
pub fn validate(p: &Params) -> Vec<Problem> {
    tuning(p).err().unwrap_or_default()
}

/// The run manifest, the deletion mark and encryption manifests: small, read by every listing,
/// check and prune, so kept in STANDARD whatever STORAGE_CLASS says.
pub fn is_manifest(key: &str) -> bool {
    let name = key.rsplit('/').next();
    name == Some(RUN_MANIFEST) || name == Some(DELETING_MARK) || key.ends_with(encryption::manifest::SUFFIX)
}

/// The thaw state from HeadObject's Restore header (`x-amz-restore`): none, `ongoing-request="true"`,
/// or `ongoing-request="false", expiry-date="…"`.
pub fn thaw_state(restore: Option<&str>) -> Thaw {
    let Some(h) = restore else { return Thaw::Frozen };
    if h.contains(r#"ongoing-request="true""#) {
        return Thaw::Thawing;
    }
    if !h.contains(r#"ongoing-request="false""#) {
        return Thaw::Frozen;
    }
    let until = h
        .split_once("expiry-date=")
        .map(|(_, d)| d.trim().trim_start_matches('"').split('"').next().unwrap_or("").to_owned())
        .unwrap_or_default();
    Thaw::Thawed { until }
}

#[derive(Debug)]
pub struct S3 {
    client: Client,
    bucket: String,
    class: Option<StorageClass>,
    part_size: usize,
    concurrency: usize,
    rt: tokio::runtime::Runtime,
    /// OBJECT_LOCK_DAYS / OBJECT_LOCK_MODE: every object stored is locked until then.
    lock: Option<Lock>,
    /// BANDWIDTH_LIMIT: uploads paced to this many bytes a second.
    throttle: Option<std::sync::Arc<Throttle>>,
}

/// Paces uploads to an average rate: each request waits until the bytes sent so far, its own
/// included, fit the rate since the first one.
#[derive(Debug)]
pub struct Throttle {
    rate: u64,
    start: std::time::Instant,
    sent: std::sync::atomic::AtomicU64,
}

impl Throttle {
    pub fn new(rate: u64) -> Self {
        Throttle { rate: rate.max(1), start: std::time::Instant::now(), sent: std::sync::atomic::AtomicU64::new(0) }
    }

    /// How long to wait before sending `n` more bytes.
    pub fn delay(&self, n: u64) -> Duration {
        let before = self.sent.fetch_add(n, std::sync::atomic::Ordering::SeqCst);
        let due = Duration::from_secs_f64(before as f64 / self.rate as f64);
        due.saturating_sub(self.start.elapsed())
    }

    async fn wait(&self, n: u64) {
        let d = self.delay(n);
        if !d.is_zero() {
            tokio::time::sleep(d).await;
        }
    }
}

/// `20M`, `512K`, `1G`, `1500000`: bytes a second (K, M, G: 1024-based).
pub fn parse_rate(v: &str) -> std::result::Result<u64, String> {
    let t = v.trim().trim_end_matches("/s").trim_end_matches(['B', 'b', 'i']);
    let (num, mult) = match t.chars().last() {
        Some('K' | 'k') => (&t[..t.len() - 1], 1u64 << 10),
        Some('M' | 'm') => (&t[..t.len() - 1], 1 << 20),
        Some('G' | 'g') => (&t[..t.len() - 1], 1 << 30),
        _ => (t, 1),
    };
    let n: f64 = num.trim().parse().map_err(|_| format!("'{v}' is not a rate (20M, 512K, 1G: bytes a second)"))?;
    if n.is_nan() || n <= 0.0 {
        return Err(format!("'{v}' must be above 0"));
    }
    Ok((n * mult as f64) as u64)
}

/// S3 Object Lock of the objects a run stores: a mode and a retain-until date.
#[derive(Debug, Clone)]
pub struct Lock {
    pub mode: aws_sdk_s3::types::ObjectLockMode,
    pub until: aws_smithy_types::DateTime,
    pub days: u64,
}

/// CRC-32C (Castagnoli), the parts' checksum: the server verifies it, and it costs a fraction
/// of SHA-256, which the whole file gets.
fn crc32c(data: &[u8]) -> u32 {
    crc_fast::checksum(crc_fast::CrcAlgorithm::Crc32Iscsi, data) as u32
}

fn b64(digest: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(digest)
}

/// The composite CRC-32C S3 gives an object made of `parts` (their CRC-32Cs, in order):
/// `b64(crc32c(part CRC32Cs))-N`; `None` when a part lacks its checksum.
fn composite_of(parts: &[CompletedPart]) -> Option<String> {
    let mut of_parts = Vec::with_capacity(parts.len() * 4);
    for p in parts {
        let raw = base64::engine::general_purpose::STANDARD.decode(p.checksum_crc32_c()?).ok()?;
        of_parts.extend_from_slice(&raw);
    }
    Some(format!("{}-{}", b64(&crc32c(&of_parts).to_be_bytes()), parts.len()))
}

/// The server's error code and message when there is one (AccessDenied: Invalid signature),
/// else the whole cause chain (connection refused, timeout…).
/// A local or transport error (no server answer to quote).
fn io_err(what: &str, e: impl std::error::Error) -> Error {
    Error::runtime(format!("{what}: {}", DisplayErrorContext(e)))
}

fn err<E: aws_sdk_s3::error::ProvideErrorMetadata + std::error::Error>(what: &str, e: E) -> Error {
    match (e.code(), e.message()) {
        (Some(code @ "InvalidObjectState"), _) => Error::runtime(format!(
            "{what}: {code}: the object is in an archive storage class (GLACIER, DEEP_ARCHIVE) and cannot be read until thawed: `backup-runner restore --run RUN --thaw DAYS` asks for that"
        )),
        (Some(code), Some(msg)) => Error::runtime(format!("{what}: {code}: {msg}")),
        (Some(code), None) => Error::runtime(format!("{what}: {code}")),
        _ => Error::runtime(format!("{what}: {}", DisplayErrorContext(e))),
    }
}

/// One object in one request, streamed from the file, with its SHA-256 for the server to check.
/// How an object is stored: its class, its lock, the pace of uploads.
#[derive(Debug, Clone, Copy)]
struct PutWith<'a> {
    class: Option<&'a StorageClass>,
    lock: Option<&'a Lock>,
    throttle: Option<&'a Throttle>,
}

async fn put_single(
    client: &Client,
    bucket: &str,
    with: PutWith<'_>,
    local: &Path,
    key: &str,
    info: &FileInfo,
) -> Result<String> {
    let PutWith { class, lock, throttle } = with;
    let class = class.cloned();
    if let Some(t) = throttle {
        t.wait(info.size).await;
    }
    // A small file: hashed first when its SHA-256 is not known yet, for the server to check.
    let sha256 = if info.sha256.is_empty() { sha256_file(local)?.1 } else { info.sha256.clone() };
    let body =
        ByteStream::from_path(local).await.map_err(|e| io_err(&format!("cannot read {}", local.display()), e))?;
    let digest = hex::decode(&sha256).map_err(|e| Error::runtime(format!("bad sha256: {e}")))?;
    client
        .put_object()
        .bucket(bucket)
        .key(key)
        .body(body)
        .content_length(i64::try_from(info.size).unwrap_or(i64::MAX))
        .checksum_sha256(b64(&digest))
        .metadata("sha256", &sha256)
        .set_storage_class(class)
        .set_object_lock_mode(lock.map(|l| l.mode.clone()))
        .set_object_lock_retain_until_date(lock.map(|l| l.until))
        // A locked upload must name its checksum's algorithm (S3: Content-MD5 or this).
        .set_checksum_algorithm(lock.map(|_| ChecksumAlgorithm::Sha256))
        .send()
        .await
        .map_err(|e| err(&format!("upload of s3://{bucket}/{key}"), e))?;
    Ok(sha256)
}

/// One object streamed and hashed into an uncommitted temporary file, checked against `info`.
async fn fetch(
    client: &Client,
    bucket: &str,
    key: &str,
    dest: &Path,
    info: &FileInfo,
) -> Result<(AtomicFile, (u64, String))> {
    let o = client
        .get_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .map_err(|e| err(&format!("cannot download s3://{bucket}/{key}"), e))?;
    let mut out = HashWriter::new(AtomicFile::create(dest)?);
    let mut body = o.body;
    while let Some(chunk) = body.try_next().await.map_err(|e| io_err(&format!("download of {key}"), e))? {
        std::io::Write::write_all(&mut out, &chunk).at("cannot write", dest)?;
    }
    checked(out, bucket, key, info)
}

/// A large object as ranges of `part` bytes, `concurrency` GETs in flight, written in order
/// and hashed into an uncommitted temporary file, checked against `info` (memory: the ranges
/// in flight).
async fn fetch_ranged(
    client: &Client,
    bucket: &str,
    key: &str,
    dest: &Path,
    info: &FileInfo,
    part: u64,
    concurrency: usize,
) -> Result<(AtomicFile, (u64, String))> {
    use futures_util::stream::{self, StreamExt};
    let ranges: Vec<(u64, u64)> =
        (0..info.size.div_ceil(part)).map(|i| (i * part, ((i + 1) * part).min(info.size) - 1)).collect();
    let mut chunks = stream::iter(ranges)
        .map(|(a, b)| {
            let req = client.get_object().bucket(bucket).key(key).range(format!("bytes={a}-{b}"));
            async move {
                let o = req.send().await.map_err(|e| err(&format!("cannot download s3://{bucket}/{key}"), e))?;
                // The body's chunks as they came (joining them would copy the range once more).
                let data: Vec<bytes::Bytes> = o
                    .body
                    .collect()
                    .await
                    .map_err(|e| io_err(&format!("download of {key}"), e))?
                    .into_segments()
                    .collect();
                let len: usize = data.iter().map(|c| c.len()).sum();
                if len as u64 != b - a + 1 {
                    return Err(Error::runtime(format!(
                        "s3://{bucket}/{key}: bytes {a}-{b} came back as {len} bytes (object changed or truncated)"
                    )));
                }
                Ok(data)
            }
        })
        .buffered(concurrency);
    let mut out = HashWriter::new(AtomicFile::create(dest)?);
    while let Some(range) = chunks.next().await {
        for chunk in range? {
            std::io::Write::write_all(&mut out, &chunk).at("cannot write", dest)?;
        }
    }
    checked(out, bucket, key, info)
}

fn checked(
    out: HashWriter<AtomicFile>,
    bucket: &str,
    key: &str,
    info: &FileInfo,
) -> Result<(AtomicFile, (u64, String))> {
    let (file, bytes, sha256) = out.finish();
    if bytes != info.size || sha256 != info.sha256 {
        return Err(Error::runtime(format!(
            "s3://{bucket}/{key}: {bytes} bytes with sha256 {sha256}, the run manifest says {} bytes with {} (damaged or replaced)",
            info.size, info.sha256
        )));
    }
    Ok((file, (bytes, sha256)))
}

impl S3 {
    /// STORAGE_CLASS for data, STANDARD for manifests (nothing when STORAGE_CLASS is not set).
    fn class_for(&self, key: &str) -> Option<StorageClass> {
        self.class.as_ref().map(|c| if is_manifest(key) { StorageClass::Standard } else { c.clone() })
    }

    /// One object into `dest` (uncommitted): in parallel ranges when it is large.
    async fn fetch(&self, key: &str, dest: &Path, info: &FileInfo) -> Result<(AtomicFile, (u64, String))> {
        if info.size as usize > self.part_size {
            let part = self.part_size as u64;
            fetch_ranged(&self.client, &self.bucket, key, dest, info, part, self.concurrency).await
        } else {
            fetch(&self.client, &self.bucket, key, dest, info).await
        }
    }

    pub fn from_params(p: &Params) -> Result<Self> {
        let bucket = p.required_str("BUCKET_NAME")?.to_owned();
        let region = p.str("REGION").unwrap_or("us-east-1").to_owned();
        let endpoint = p.str("ENDPOINT_URL").map(str::to_owned);
        let path_style = p.flag("FORCE_PATH_STYLE", endpoint.is_some())?;
        let streamed_checksums =
            p.choice("REQUEST_CHECKSUM_CALCULATION", &["when_required", "when_supported"], "when_required")?
                == "when_supported";
        let class = p.str("STORAGE_CLASS").map(|c| StorageClass::from(c.to_ascii_uppercase().as_str()));
        let (part_mb, concurrency) = tuning(p).map_err(|problems| {
            Error::usage(problems.iter().map(|p| format!("--{p}")).collect::<Vec<_>>().join("; "))
        })?;
        let attempt = attempt_timeout(std::env::var(ATTEMPT_TIMEOUT_ENV).ok().as_deref())?;
        let attempts = max_attempts(std::env::var("AWS_MAX_ATTEMPTS").ok().as_deref())?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| Error::io("cannot start the S3 runtime", e))?;
        let client = rt.block_on(async {
            use aws_config::retry::RetryConfig;
            use aws_config::timeout::TimeoutConfig;
            let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
                .region(aws_config::Region::new(region))
                .retry_config(RetryConfig::standard().with_max_attempts(attempts))
                .timeout_config(
                    TimeoutConfig::builder()
                        .connect_timeout(Duration::from_secs(10))
                        .operation_attempt_timeout(attempt)
                        .build(),
                );
            if let Some(ep) = &endpoint {
                loader = loader.endpoint_url(ep);
            }
            if !streamed_checksums {
                // We send every checksum ourselves, up front; some stores (Garage 2.5) reject
                // the SDK's streamed trailer checksums.
                loader = loader
                    .request_checksum_calculation(aws_sdk_s3::config::RequestChecksumCalculation::WhenRequired)
                    .response_checksum_validation(aws_sdk_s3::config::ResponseChecksumValidation::WhenRequired);
            }
            let sdk = loader.load().await;
            Client::from_conf(aws_sdk_s3::config::Builder::from(&sdk).force_path_style(path_style).build())
        });
        let lock = match p.u64("OBJECT_LOCK_DAYS")? {
            None | Some(0) => None,
            Some(days) => {
                let mode = match p.choice("OBJECT_LOCK_MODE", &["GOVERNANCE", "COMPLIANCE"], "GOVERNANCE")?.as_str() {
                    "COMPLIANCE" => aws_sdk_s3::types::ObjectLockMode::Compliance,
                    _ => aws_sdk_s3::types::ObjectLockMode::Governance,
                };
                let secs = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0)
                    .saturating_add(days.saturating_mul(86_400));
                let until = aws_smithy_types::DateTime::from_secs(i64::try_from(secs).unwrap_or(i64::MAX));
                Some(Lock { mode, until, days })
            }
        };
        let throttle = match p.str("BANDWIDTH_LIMIT") {
            Some(v) => Some(std::sync::Arc::new(Throttle::new(
                parse_rate(v).map_err(|e| Error::usage(format!("--BANDWIDTH_LIMIT: {e}")))?,
            ))),
            None => None,
        };
        let s3 = S3 {
            client,
            bucket,
            class,
            part_size: usize::try_from(part_mb << 20).unwrap_or(8 << 20),
            concurrency,
            rt,
            lock,
            throttle,
        };
        if s3.lock.is_some() {
            s3.check_object_lock()?;
        }
        Ok(s3)
    }

    /// OBJECT_LOCK_DAYS needs a bucket made with Object Lock: checked before anything is stored.
    pub fn check_object_lock(&self) -> Result<()> {
        let got = self.rt.block_on(self.client.get_object_lock_configuration().bucket(&self.bucket).send());
        let enabled = got
            .as_ref()
            .ok()
            .and_then(|o| o.object_lock_configuration())
            .and_then(|c| c.object_lock_enabled())
            .map(|e| e.as_str() == "Enabled");
        match (got, enabled) {
            (Ok(_), Some(true)) => Ok(()),
            (Ok(_), _) => Err(Error::usage(format!(
                "OBJECT_LOCK_DAYS: bucket {} has Object Lock disabled (it is enabled when a bucket is created: aws s3api create-bucket --object-lock-enabled-for-bucket)",
                self.bucket
            ))),
            (Err(e), _) => Err(Error::usage(format!(
                "OBJECT_LOCK_DAYS: bucket {} does not support S3 Object Lock ({}): create it with --object-lock-enabled-for-bucket on a store that implements it (AWS, MinIO, Ceph; not Garage), or remove OBJECT_LOCK_DAYS",
                self.bucket,
                aws_sdk_s3::error::DisplayErrorContext(&e)
            ))),
        }
    }

    /// When the objects of a run (its manifest) stay locked: the retain-until date, if in the future.
    pub fn locked_until(&self, key: &str) -> Result<Option<String>> {
        let head = self.rt.block_on(self.client.head_object().bucket(&self.bucket).key(key).send());
        match head {
            Ok(o) => {
                let now = aws_smithy_types::DateTime::from(std::time::SystemTime::now());
                Ok(o.object_lock_retain_until_date()
                    .filter(|d| d.secs() > now.secs())
                    .map(|d| d.fmt(aws_smithy_types::date_time::Format::DateTime).unwrap_or_default()))
            }
            Err(e) if e.as_service_error().is_some_and(|s| s.is_not_found()) => Ok(None),
            Err(e) => Err(err(&format!("cannot check s3://{}/{key}", self.bucket), e)),
        }
    }

    /// Deletes one object (deleting a missing one succeeds, as S3 answers).
    pub fn delete_key(&self, key: &str) -> Result<()> {
        self.rt
            .block_on(self.client.delete_object().bucket(&self.bucket).key(key).send())
            .map(drop)
            .map_err(|e| err(&format!("cannot delete s3://{}/{key}", self.bucket), e))
    }

    /// Aborts multipart uploads under `prefix` left by a run that died.
    pub fn abort_stale(&self, prefix: &str) -> Result<usize> {
        self.rt.block_on(async {
            let out = self
                .client
                .list_multipart_uploads()
                .bucket(&self.bucket)
                .prefix(prefix)
                .send()
                .await
                .map_err(|e| err(&format!("s3://{}: cannot list multipart uploads", self.bucket), e))?;
            let mut n = 0;
            for u in out.uploads() {
                if let (Some(k), Some(id)) = (u.key(), u.upload_id()) {
                    self.client
                        .abort_multipart_upload()
                        .bucket(&self.bucket)
                        .key(k)
                        .upload_id(id)
                        .send()
                        .await
                        .map_err(|e| err("cannot abort an old multipart upload", e))?;
                    log::warn!("aborted an unfinished multipart upload of {k} left by an earlier run");
                    n += 1;
                }
            }
            Ok(n)
        })
    }

    /// A large file in parts, read once: the whole file's SHA-256 is computed from the parts
    /// as they are read. When it is known beforehand (a second destination) it is also stored
    /// as `sha256` metadata; the parts' composite checksum identifies the object either way.
    async fn put_multipart(&self, local: &Path, key: &str, info: &FileInfo, bar: &Progress) -> Result<String> {
        let meta = (!info.sha256.is_empty()).then(|| [("sha256".to_owned(), info.sha256.clone())].into());
        let created = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .checksum_algorithm(ChecksumAlgorithm::Crc32C)
            .set_metadata(meta)
            .set_storage_class(self.class_for(key))
            .set_object_lock_mode(self.lock.as_ref().map(|l| l.mode.clone()))
            .set_object_lock_retain_until_date(self.lock.as_ref().map(|l| l.until))
            .send()
            .await
            .map_err(|e| err(&format!("upload of s3://{}/{key}", self.bucket), e))?;
        let id = created.upload_id().unwrap_or_default().to_owned();
        match self.upload_parts(local, key, &id, info, bar).await {
            Ok((parts, sha256)) => {
                let expected = composite_of(&parts);
                let done = self
                    .client
                    .complete_multipart_upload()
                    .bucket(&self.bucket)
                    .key(key)
                    .upload_id(&id)
                    .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(parts)).build())
                    .send()
                    .await;
                if let Err(e) = done {
                    // The answer to a Complete that did complete can be lost: the SDK's retry
                    // then hears NoSuchUpload. The object, whole, tells by its size and the
                    // composite checksum of the very parts we sent.
                    if self.is_whole(key, info.size, expected.as_deref()).await {
                        log::info!("upload of {key}: its completion's answer was lost, the object is whole");
                        return Ok(sha256);
                    }
                    self.abort(key, &id).await;
                    return Err(err(&format!("upload of {key}"), e));
                }
                Ok(sha256)
            }
            Err(e) => {
                self.abort(key, &id).await;
                Err(e)
            }
        }
    }

    /// Whether `key` holds an object of `size` bytes whose composite CRC-32C is `composite`.
    async fn is_whole(&self, key: &str, size: u64, composite: Option<&str>) -> bool {
        let Some(want) = composite else { return false };
        let head = self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(key)
            .checksum_mode(aws_sdk_s3::types::ChecksumMode::Enabled)
            .send()
            .await;
        head.is_ok_and(|o| {
            u64::try_from(o.content_length().unwrap_or(-1)).ok() == Some(size) && o.checksum_crc32_c() == Some(want)
        })
    }

    async fn abort(&self, key: &str, id: &str) {
        if let Err(e) = self.client.abort_multipart_upload().bucket(&self.bucket).key(key).upload_id(id).send().await {
            log::warn!("could not abort the multipart upload of {key} (the next run will): {}", DisplayErrorContext(e));
        }
    }

    /// Parts of `part_size`, at most `concurrency` in flight (memory: their buffers only); the
    /// parts, and the SHA-256 of the whole file as read.
    async fn upload_parts(
        &self,
        local: &Path,
        key: &str,
        id: &str,
        info: &FileInfo,
        bar: &Progress,
    ) -> Result<(Vec<CompletedPart>, String)> {
        let mut file = std::fs::File::open(local).at("cannot open", local)?;
        let mut whole = Sha256::new();
        let mut tasks = tokio::task::JoinSet::new();
        let mut parts = Vec::new();
        let mut number = 0i32;
        let mut sent = 0u64;
        loop {
            let mut buf = Vec::with_capacity(self.part_size);
            (&mut file).take(self.part_size as u64).read_to_end(&mut buf).at("cannot read", local)?;
            if buf.is_empty() && number > 0 {
                break;
            }
            sent += buf.len() as u64;
            number += 1;
            whole.update(&buf);
            bar.add(buf.len() as u64);
            let checksum = b64(&crc32c(&buf).to_be_bytes());
            let part_len = buf.len() as u64;
            let req = self
                .client
                .upload_part()
                .bucket(&self.bucket)
                .key(key)
                .upload_id(id)
                .part_number(number)
                .checksum_crc32_c(checksum.clone())
                .body(ByteStream::from(buf));
            let n = number;
            if let Some(t) = &self.throttle {
                t.wait(part_len).await;
            }
            // The part's body is not hashed again for the signature (UNSIGNED-PAYLOAD, as the
            // aws CLI sends over HTTPS): its CRC-32C, a signed header, is what the server checks.
            let req = req.customize().disable_payload_signing();
            tasks.spawn(async move { req.send().await.map(|o| (n, o.e_tag().map(str::to_owned), checksum)) });
            while tasks.len() >= self.concurrency {
                parts.push(self.joined(tasks.join_next().await, key).await?);
            }
            if sent >= info.size {
                break;
            }
        }
        while let Some(r) = tasks.join_next().await {
            parts.push(self.joined(Some(r), key).await?);
        }
        let sha256 = hex::encode(whole.finalize());
        if !crate::backend::same_file(info, sent, &sha256) {
            return Err(Error::runtime(format!("{} changed while it was uploaded", local.display())));
        }
        parts.sort_by_key(|p| p.part_number());
        Ok((parts, sha256))
    }

    /// `b64(crc32c(part CRC32Cs))-N`: the composite checksum S3 keeps for an object uploaded
    /// in parts of `part_size`, computed from the local file (see [`composite_of`]).
    fn composite(&self, local: &Path) -> Result<String> {
        let mut file = std::fs::File::open(local).at("cannot open", local)?;
        let mut of_parts = Vec::new();
        let mut n = 0;
        let mut buf = Vec::with_capacity(self.part_size);
        loop {
            buf.clear();
            (&mut file).take(self.part_size as u64).read_to_end(&mut buf).at("cannot read", local)?;
            if buf.is_empty() {
                break;
            }
            of_parts.extend_from_slice(&crc32c(&buf).to_be_bytes());
            n += 1;
        }
        Ok(format!("{}-{n}", b64(&crc32c(&of_parts).to_be_bytes())))
    }

    async fn joined(&self, r: Option<PartResult>, key: &str) -> Result<CompletedPart> {
        match r {
            Some(Ok(Ok((n, etag, sum)))) => {
                Ok(CompletedPart::builder().part_number(n).set_e_tag(etag).checksum_crc32_c(sum).build())
            }
            Some(Ok(Err(e))) => Err(err(&format!("upload of a part of {key}"), e)),
            Some(Err(e)) => Err(Error::runtime(format!("upload of {key}: {e}"))),
            None => Err(Error::runtime(format!("upload of {key}: no part finished"))),
        }
    }

    /// Every object under `prefix` with its storage class, as the listing gives it.
    async fn classes(&self, prefix: &str) -> Result<Vec<(String, String)>> {
        let (objects, _) = self.listing(prefix, false).await?;
        Ok(objects
            .iter()
            .filter_map(|o| {
                let class = o.storage_class().map_or("STANDARD", |c| c.as_str());
                o.key().map(|k| (k.to_owned(), class.to_owned()))
            })
            .collect())
    }

    async fn keys(&self, prefix: &str, delimiter: bool) -> Result<(Vec<String>, Vec<String>)> {
        let (objects, prefixes) = self.listing(prefix, delimiter).await?;
        Ok((objects.iter().filter_map(|o| o.key().map(str::to_owned)).collect(), prefixes))
    }

    /// Every object under `prefix` (all pages), and with `delimiter` the folders below it.
    async fn listing(&self, prefix: &str, delimiter: bool) -> Result<(Vec<aws_sdk_s3::types::Object>, Vec<String>)> {
        let (mut objects, mut prefixes) = (Vec::new(), Vec::new());
        let mut token: Option<String> = None;
        loop {
            let mut req =
                self.client.list_objects_v2().bucket(&self.bucket).prefix(prefix).set_continuation_token(token.clone());
            if delimiter {
                req = req.delimiter("/");
            }
            let out = req.send().await.map_err(|e| err(&format!("cannot list s3://{}/{prefix}", self.bucket), e))?;
            objects.extend(out.contents().iter().cloned());
            prefixes.extend(out.common_prefixes().iter().filter_map(|p| p.prefix().map(str::to_owned)));
            token = out.next_continuation_token().map(str::to_owned);
            if token.is_none() {
                return Ok((objects, prefixes));
            }
        }
    }
}

impl Backend for S3 {
    fn describe(&self) -> String {
        format!("s3://{}", self.bucket)
    }

    fn locked_until(&self, prefix: &str, run_id: &str) -> Result<Option<String>> {
        S3::locked_until(self, &format!("{prefix}{run_id}/{RUN_MANIFEST}"))
    }

    fn stat(&self, key: &str) -> Result<Option<(u64, String)>> {
        self.rt.block_on(async {
            match self.client.head_object().bucket(&self.bucket).key(key).send().await {
                Ok(o) => {
                    let size = u64::try_from(o.content_length().unwrap_or(0)).unwrap_or(0);
                    let sha = o.metadata().and_then(|m| m.get("sha256").cloned()).unwrap_or_default();
                    Ok(Some((size, sha)))
                }
                Err(e) if e.as_service_error().is_some_and(|s| s.is_not_found()) => Ok(None),
                Err(e) => Err(err(&format!("cannot check s3://{}/{key}", self.bucket), e)),
            }
        })
    }

    /// The object's `sha256` metadata; without it (stored in parts as the first destination),
    /// its composite checksum, compared with the local file's in the same parts.
    fn holds(&self, key: &str, local: &Path, info: &FileInfo) -> Result<bool> {
        let head = self.rt.block_on(async {
            self.client
                .head_object()
                .bucket(&self.bucket)
                .key(key)
                .checksum_mode(aws_sdk_s3::types::ChecksumMode::Enabled)
                .send()
                .await
        });
        let o = match head {
            Ok(o) => o,
            Err(e) if e.as_service_error().is_some_and(|s| s.is_not_found()) => return Ok(false),
            Err(e) => return Err(err(&format!("cannot check s3://{}/{key}", self.bucket), e)),
        };
        if u64::try_from(o.content_length().unwrap_or(-1)).ok() != Some(info.size) {
            return Ok(false);
        }
        if let Some(sha) = o.metadata().and_then(|m| m.get("sha256")) {
            return Ok(*sha == info.sha256);
        }
        match o.checksum_crc32_c() {
            Some(c) if c.contains('-') => Ok(self.composite(local)? == c),
            _ => Ok(false),
        }
    }

    fn put(&self, local: &Path, key: &str, info: &FileInfo) -> Result<String> {
        self.rt.block_on(async {
            if info.size as usize <= self.part_size {
                let class = self.class_for(key);
                let with =
                    PutWith { class: class.as_ref(), lock: self.lock.as_ref(), throttle: self.throttle.as_deref() };
                put_single(&self.client, &self.bucket, with, local, key, info).await
            } else {
                self.put_multipart(local, key, info, &Progress::hidden()).await
            }
        })
    }

    /// Small files go up concurrently (UPLOAD_CONCURRENCY x 4 at once); large ones one after
    /// the other, each with its parts in parallel.
    fn put_all(&self, items: &[(std::path::PathBuf, String, FileInfo)], bar: &Progress) -> Result<Vec<String>> {
        let mut shas = vec![String::new(); items.len()];
        self.rt.block_on(async {
            let mut tasks = tokio::task::JoinSet::new();
            let small = items.iter().enumerate().filter(|(_, (_, _, i))| i.size as usize <= self.part_size);
            for (n, (path, key, info)) in small {
                let (client, bucket, class) = (self.client.clone(), self.bucket.clone(), self.class_for(key));
                let (lock, throttle) = (self.lock.clone(), self.throttle.clone());
                let (path, key, info) = (path.clone(), key.clone(), info.clone());
                tasks.spawn(async move {
                    put_single(
                        &client,
                        &bucket,
                        PutWith { class: class.as_ref(), lock: lock.as_ref(), throttle: throttle.as_deref() },
                        &path,
                        &key,
                        &info,
                    )
                    .await
                    .map(|s| (n, s))
                });
                while tasks.len() >= self.concurrency * 4 {
                    if let Some(done) = tasks.join_next().await {
                        let (n, sha) = done.map_err(|e| Error::runtime(format!("upload task: {e}")))??;
                        bar.add(items[n].2.size);
                        shas[n] = sha;
                    }
                }
            }
            while let Some(done) = tasks.join_next().await {
                let (n, sha) = done.map_err(|e| Error::runtime(format!("upload task: {e}")))??;
                bar.add(items[n].2.size);
                shas[n] = sha;
            }
            for (n, (path, key, info)) in
                items.iter().enumerate().filter(|(_, (_, _, i))| i.size as usize > self.part_size)
            {
                shas[n] = self.put_multipart(path, key, info, bar).await?;
            }
            Ok(shas)
        })
    }

    fn sizes(&self, prefix: &str) -> Result<std::collections::HashMap<String, u64>> {
        let (objects, _) = self.rt.block_on(self.listing(prefix, false))?;
        Ok(objects
            .iter()
            .filter_map(|o| o.key().map(|k| (k.to_owned(), u64::try_from(o.size().unwrap_or(0)).unwrap_or(0))))
            .collect())
    }

    fn put_bytes(&self, key: &str, bytes: &[u8]) -> Result<()> {
        let sum = b64(&Sha256::digest(bytes));
        self.rt.block_on(async {
            self.client
                .put_object()
                .bucket(&self.bucket)
                .key(key)
                .body(ByteStream::from(bytes.to_vec()))
                .checksum_sha256(sum)
                .metadata("sha256", hex::encode(Sha256::digest(bytes)))
                .set_storage_class(self.class_for(key))
                .set_object_lock_mode(self.lock.as_ref().map(|l| l.mode.clone()))
                .set_object_lock_retain_until_date(self.lock.as_ref().map(|l| l.until))
                .set_checksum_algorithm(self.lock.as_ref().map(|_| ChecksumAlgorithm::Sha256))
                .send()
                .await
                .map_err(|e| err(&format!("upload of s3://{}/{key}", self.bucket), e))?;
            Ok(())
        })
    }

    fn get_bytes(&self, key: &str) -> Result<Option<Vec<u8>>> {
        self.rt.block_on(async {
            match self.client.get_object().bucket(&self.bucket).key(key).send().await {
                Ok(o) => o
                    .body
                    .collect()
                    .await
                    .map(|b| Some(b.to_vec()))
                    .map_err(|e| io_err(&format!("cannot read {key}"), e)),
                Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => Ok(None),
                Err(e) => Err(err(&format!("cannot read s3://{}/{key}", self.bucket), e)),
            }
        })
    }

    fn open(&self, key: &str) -> Result<Box<dyn Read + Send>> {
        let what = format!("s3://{}/{key}", self.bucket);
        let o = self
            .rt
            .block_on(self.client.get_object().bucket(&self.bucket).key(key).send())
            .map_err(|e| err(&format!("cannot download {what}"), e))?;
        Ok(Box::new(BodyReader { rt: self.rt.handle().clone(), body: o.body, chunk: bytes::Bytes::new(), what }))
    }

    fn get(&self, key: &str, dest: &Path, info: &FileInfo) -> Result<Artifact> {
        let (file, (bytes, sha256)) = self.rt.block_on(self.fetch(key, dest, info))?;
        Ok(Artifact { path: file.commit()?, bytes, sha256 })
    }

    /// Concurrent GETs (UPLOAD_CONCURRENCY x 4 small objects at once, large ones in
    /// UPLOAD_CONCURRENCY parallel ranges), each hashed into its temporary file; all are
    /// verified, then committed together.
    fn get_all(&self, items: &[(String, std::path::PathBuf, FileInfo)]) -> Result<Vec<Artifact>> {
        let fetched = self.rt.block_on(async {
            let mut tasks = tokio::task::JoinSet::new();
            let mut out = Vec::with_capacity(items.len());
            // Large objects one at a time, each in parallel ranges; small ones side by side.
            for (key, dest, info) in items.iter().filter(|(_, _, i)| i.size as usize > self.part_size) {
                out.push(self.fetch(key, dest, info).await?);
            }
            for (key, dest, info) in items.iter().filter(|(_, _, i)| i.size as usize <= self.part_size) {
                let (client, bucket) = (self.client.clone(), self.bucket.clone());
                let (key, dest, info) = (key.clone(), dest.clone(), info.clone());
                tasks.spawn(async move { fetch(&client, &bucket, &key, &dest, &info).await });
                while tasks.len() >= self.concurrency * 4 {
                    if let Some(done) = tasks.join_next().await {
                        out.push(done.map_err(|e| Error::runtime(format!("download task: {e}")))??);
                    }
                }
            }
            while let Some(done) = tasks.join_next().await {
                out.push(done.map_err(|e| Error::runtime(format!("download task: {e}")))??);
            }
            Ok::<_, Error>(out)
        })?;
        let (files, arts): (Vec<AtomicFile>, Vec<(u64, String)>) = fetched.into_iter().unzip();
        let paths = ncb_core::atomic::commit_all(files)?;
        Ok(paths.into_iter().zip(arts).map(|(path, (bytes, sha256))| Artifact { path, bytes, sha256 }).collect())
    }

    fn runs(&self, prefix: &str) -> Result<Vec<String>> {
        let (_, prefixes) = self.rt.block_on(self.keys(prefix, true))?;
        let mut runs: Vec<String> = prefixes
            .iter()
            .filter_map(|p| p.strip_prefix(prefix).map(|r| r.trim_end_matches('/').to_owned()))
            .filter(|r| crate::retention::run_time(r).is_some())
            .collect();
        runs.sort();
        Ok(runs)
    }

    /// The listing gives each object's class; those in an archive class are asked for their
    /// Restore header (HeadObject), UPLOAD_CONCURRENCY x 4 at a time.
    fn archived(&self, prefix: &str) -> Result<Vec<Archived>> {
        use futures_util::stream::{self, StreamExt, TryStreamExt};
        self.rt.block_on(async {
            let frozen: Vec<(String, String)> = self
                .classes(prefix)
                .await?
                .into_iter()
                .filter(|(_, class)| ARCHIVE_CLASSES.contains(&class.as_str()))
                .collect();
            stream::iter(frozen)
                .map(|(key, class)| async move {
                    let o = self
                        .client
                        .head_object()
                        .bucket(&self.bucket)
                        .key(&key)
                        .send()
                        .await
                        .map_err(|e| err(&format!("cannot check s3://{}/{key}", self.bucket), e))?;
                    Ok::<_, Error>(Archived { thaw: thaw_state(o.restore()), key, class })
                })
                .buffered(self.concurrency * 4)
                .try_collect()
                .await
        })
    }

    /// RestoreObject (Standard tier) for each key, UPLOAD_CONCURRENCY x 4 at a time: a request
    /// accepted, or one already under way, is thawing; an object already thawed gets `days`
    /// from now.
    fn thaw(&self, keys: &[String], days: u32) -> Result<Vec<Thaw>> {
        use aws_sdk_s3::types::{GlacierJobParameters, RestoreRequest, Tier};
        use futures_util::stream::{self, StreamExt, TryStreamExt};
        let days = i32::try_from(days).map_err(|_| Error::usage(format!("--thaw {days}: too many days")))?;
        let job = GlacierJobParameters::builder()
            .tier(Tier::Standard)
            .build()
            .map_err(|e| Error::runtime(format!("restore request: {e}")))?;
        let request = RestoreRequest::builder().days(days).glacier_job_parameters(job).build();
        self.rt.block_on(
            stream::iter(keys)
                .map(|key| {
                    let req =
                        self.client.restore_object().bucket(&self.bucket).key(key).restore_request(request.clone());
                    async move {
                        match req.send().await {
                            // 202 Accepted: started; 200 OK: a thawed copy, now kept longer.
                            Ok(_) => Ok(Thaw::Thawing),
                            Err(e) => {
                                use aws_sdk_s3::error::ProvideErrorMetadata;
                                match e.code() {
                                    Some("RestoreAlreadyInProgress") => Ok(Thaw::Thawing),
                                    Some("ObjectAlreadyInActiveTierError") => Ok(Thaw::Thawed { until: String::new() }),
                                    _ => Err(err(&format!("cannot thaw s3://{}/{key}", self.bucket), e)),
                                }
                            }
                        }
                    }
                })
                .buffered(self.concurrency * 4)
                .try_collect(),
        )
    }

    fn delete_run(&self, prefix: &str, run_id: &str) -> Result<()> {
        let run = format!("{prefix}{run_id}/");
        let mark = format!("{run}{DELETING_MARK}");
        self.put_bytes(&mark, &deleting_mark_text())?;
        self.rt.block_on(async {
            // The manifest first: a half-deleted run is then visibly incomplete.
            let manifest = format!("{run}{RUN_MANIFEST}");
            self.client
                .delete_object()
                .bucket(&self.bucket)
                .key(&manifest)
                .send()
                .await
                .map_err(|e| err(&format!("cannot delete {manifest}"), e))?;
            let (keys, _) = self.keys(&run, false).await?;
            let keys: Vec<&String> = keys.iter().filter(|k| **k != mark).collect();
            for chunk in keys.chunks(1000) {
                let ids: Vec<ObjectIdentifier> =
                    chunk.iter().filter_map(|k| ObjectIdentifier::builder().key(*k).build().ok()).collect();
                let delete = Delete::builder()
                    .set_objects(Some(ids))
                    .quiet(true)
                    .build()
                    .map_err(|e| Error::runtime(format!("delete request: {e}")))?;
                let out = self
                    .client
                    .delete_objects()
                    .bucket(&self.bucket)
                    .delete(delete)
                    .send()
                    .await
                    .map_err(|e| err(&format!("cannot delete run {run_id}"), e))?;
                // Quiet mode answers only the keys it could not delete.
                if let Some(first) = out.errors().first() {
                    return Err(Error::runtime(format!(
                        "cannot delete run {run_id}: {} of {} objects refused, first {}: {} {}",
                        out.errors().len(),
                        chunk.len(),
                        first.key().unwrap_or("?"),
                        first.code().unwrap_or("?"),
                        first.message().unwrap_or("")
                    )));
                }
            }
            self.client
                .delete_object()
                .bucket(&self.bucket)
                .key(&mark)
                .send()
                .await
                .map_err(|e| err(&format!("cannot delete {mark}"), e))?;
            Ok(())
        })
    }
}

/// An object's body read from blocking code (each chunk awaited on the S3 runtime).
struct BodyReader {
    rt: tokio::runtime::Handle,
    body: ByteStream,
    chunk: bytes::Bytes,
    what: String,
}

impl Read for BodyReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.chunk.is_empty() {
            match self.rt.block_on(self.body.try_next()) {
                Ok(Some(c)) => self.chunk = c,
                Ok(None) => return Ok(0),
                Err(e) => {
                    return Err(std::io::Error::other(format!(
                        "download of {}: {}",
                        self.what,
                        DisplayErrorContext(e)
                    )));
                }
            }
        }
        let n = buf.len().min(self.chunk.len());
        buf[..n].copy_from_slice(&self.chunk.split_to(n));
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> Params {
        let mut p = Params::new();
        for (k, v) in pairs {
            p.set(k, *v);
        }
        p
    }

    #[test]
    fn part_size_and_concurrency_out_of_range_are_refused() {
        assert_eq!(tuning(&params(&[])), Ok((8, 4)));
        assert_eq!(tuning(&params(&[("PART_SIZE_MB", "5"), ("UPLOAD_CONCURRENCY", "16")])), Ok((5, 16)));
        assert_eq!(tuning(&params(&[("PART_SIZE_MB", "512"), ("UPLOAD_CONCURRENCY", "1")])), Ok((512, 1)));
        let problems = validate(&params(&[("PART_SIZE_MB", "4"), ("UPLOAD_CONCURRENCY", "17")]));
        let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
        assert_eq!(
            text,
            [
                "PART_SIZE_MB: 4 is out of range: 5 to 512 (MiB per part; S3 refuses parts under 5 MiB)",
                "UPLOAD_CONCURRENCY: 17 is out of range: 1 to 16 (requests in flight)"
            ]
        );
        let text = validate(&params(&[("PART_SIZE_MB", "1024"), ("UPLOAD_CONCURRENCY", "0")]));
        assert_eq!(text.len(), 2, "{text:?}");
        let text = validate(&params(&[("UPLOAD_CONCURRENCY", "many")]));
        assert_eq!(text[0].to_string(), "UPLOAD_CONCURRENCY: 'many' is not a whole number from 1 to 16");
        // The client is never made with values out of range: a usage error (exit 2).
        let e = S3::from_params(&params(&[("BUCKET_NAME", "b"), ("PART_SIZE_MB", "600")])).unwrap_err();
        assert_eq!(e.exit_status(), ncb_core::ExitStatus::Usage);
        assert!(e.to_string().starts_with("--PART_SIZE_MB: 600 is out of range"), "{e}");
    }

    #[test]
    fn attempt_timeout_and_attempts_from_the_environment() {
        assert_eq!(attempt_timeout(None).ok(), Some(Duration::from_secs(300)));
        assert_eq!(attempt_timeout(Some(" 3 ")).ok(), Some(Duration::from_secs(3)));
        for bad in ["0", "2m", "", "86401"] {
            let e = attempt_timeout(Some(bad)).unwrap_err();
            assert_eq!(e.exit_status(), ncb_core::ExitStatus::Usage);
            assert!(e.to_string().starts_with("NCB_S3_ATTEMPT_TIMEOUT="), "{e}");
        }
        assert_eq!(max_attempts(None).ok(), Some(5));
        assert_eq!(max_attempts(Some("3")).ok(), Some(3));
        for bad in ["0", "21", "x"] {
            assert_eq!(max_attempts(Some(bad)).unwrap_err().exit_status(), ncb_core::ExitStatus::Usage);
        }
    }

    #[test]
    fn manifests_stay_standard() {
        assert!(is_manifest("web1/20261122T010000Z-dddd/RUN-MANIFEST.json"));
        assert!(is_manifest("web1/r/files.tar.gz.enc.manifest.json"));
        assert!(!is_manifest("web1/r/files.tar.gz.enc.000"));
        assert!(!is_manifest("web1/r/RUN-MANIFEST.json.bak"));
    }

    #[test]
    fn restore_header_tells_the_thaw_state() {
        assert_eq!(thaw_state(None), Thaw::Frozen);
        assert_eq!(thaw_state(Some(r#"ongoing-request="true""#)), Thaw::Thawing);
        assert_eq!(
            thaw_state(Some(r#"ongoing-request="false", expiry-date="Fri, 21 Dec 2012 00:00:00 GMT""#)),
            Thaw::Thawed { until: "Fri, 21 Dec 2012 00:00:00 GMT".into() }
        );
        assert_eq!(thaw_state(Some(r#"ongoing-request="false""#)), Thaw::Thawed { until: String::new() });
    }
}
