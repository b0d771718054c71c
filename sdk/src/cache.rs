//! The broker's result cache, seen from a client: its figures, and invalidation.
//!
//! Which calls are cached is the workers' decision (they declare pure functions cacheable);
//! a step may opt out or force a fresh result with [`PlanBuilder::cache`](crate::PlanBuilder::cache).

use mpreg_protocol::{
    BrokerToClient, CacheInvalidate, CacheInvalidated, CacheStatsReply, CacheStatsRequest,
    ClientToBroker,
};

use crate::link::RequestKind;
use crate::pending_reply::unexpected;
use crate::{Client, Error};

impl Client {
    /// The broker's cache figures: policy, entries, bytes, hits, misses, evictions.
    ///
    /// # Errors
    /// As [`Client::status`].
    pub async fn cache_stats(&self) -> Result<CacheStatsReply, Error> {
        let id = self.next_id();
        let message = ClientToBroker::CacheStats(CacheStatsRequest { id });
        match self.cache_request(message).await? {
            BrokerToClient::CacheStats(reply) => Ok(reply),
            BrokerToClient::Error(e) => Err(e.into()),
            other => Err(unexpected("cache_stats", &other)),
        }
    }

    /// Drops the cached results carrying `tag`, and everything computed from them, on this
    /// broker and (sent on, not awaited) on the other brokers of its cluster. Under CURVE the
    /// client must be allowed to call every function (`*`).
    ///
    /// # Errors
    /// `404 access_denied`, and as [`Client::status`].
    pub async fn cache_invalidate_tag(&self, tag: &str) -> Result<CacheInvalidated, Error> {
        self.cache_invalidate(Some(tag.to_string()), None).await
    }

    /// Drops the cached results of `fun`, and everything computed from them, here and on the
    /// cluster's other brokers. Under CURVE the client must be allowed to call `fun`.
    ///
    /// # Errors
    /// `404 access_denied`, and as [`Client::status`].
    pub async fn cache_invalidate_function(&self, fun: &str) -> Result<CacheInvalidated, Error> {
        self.cache_invalidate(None, Some(fun.to_string())).await
    }

    async fn cache_invalidate(
        &self,
        tag: Option<String>,
        fun: Option<String>,
    ) -> Result<CacheInvalidated, Error> {
        let id = self.next_id();
        let message = ClientToBroker::CacheInvalidate(CacheInvalidate { id, tag, fun });
        match self.cache_request(message).await? {
            BrokerToClient::CacheInvalidated(reply) => Ok(reply),
            BrokerToClient::Error(e) => Err(e.into()),
            other => Err(unexpected("cache_invalidated", &other)),
        }
    }

    async fn cache_request(&self, message: ClientToBroker) -> Result<BrokerToClient, Error> {
        let timeout = self.options().request_timeout;
        // Both are safe to send again after a lost connection (an invalidation twice drops
        // nothing more).
        let pending = self
            .request_as(message, RequestKind::Idempotent, timeout, None)
            .await?;
        pending.wait().await
    }
}
