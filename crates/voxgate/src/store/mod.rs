//! The store (DESIGN.md "Storage"): the call core's [`CallStore`] port plus the reads the APIs
//! need. SQLite is the embedded default ([`sqlite::SqliteStore`]); PostgreSQL arrives with its own
//! backend behind the same traits. Times are Unix epoch milliseconds.

pub mod sqlite;

use async_trait::async_trait;
pub use voxgate_call::{CallRecord, CallStore, StoreError, TranscriptRecord};

/// Everything voxgate stores: the core's writes ([`CallStore`]) and the reads of the APIs.
#[async_trait]
pub trait Store: CallStore {
    /// One call by id.
    async fn call(&self, id: &str) -> Result<Option<CallRecord>, StoreError>;
    /// A call's transcript, in index order.
    async fn transcript(&self, id: &str) -> Result<Vec<TranscriptRecord>, StoreError>;
}
