//! ncb-archive: the data path shared by filesbackup, compression and the database dumps.
//!
//! - [`pgzip`]: parallel, multi-member gzip that any gzip reader accepts
//! - [`encoder`]: COMPRESSION_FORMAT gzip | zstd | none, COMPRESSION_LEVEL
//! - [`archive`]: a streaming tar writer over the filesystem, with excludes and filters
//! - [`snapshot`]: what an incremental archive knows of the run before it
//! - [`extract`]: the way back: tar (plain, gzip, zstd) extracted under one folder, never outside it
//!
//! Everything streams: memory stays flat whatever the size of the data.

pub mod archive;
pub mod encoder;
pub mod extract;
pub mod glob;
pub mod index;
pub mod longpath;
pub mod meta;
pub mod owners;
pub mod pgzip;
pub mod snapshot;

pub use archive::{Exclude, Incremental, Options, Root, Stats, write_archive, write_archive_with};
pub use encoder::{Compressor, Format, Settings};
