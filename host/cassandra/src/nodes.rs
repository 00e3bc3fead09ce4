//! The `nodes` table: where each node's HTTP API is reached, so a node that receives an
//! operation on a task of a partition it does not own can forward it to the owner (whose
//! node id is in `partition_owners`).

use kairos_core::store::StoreResult;

use crate::CassandraStore;
use crate::error::{Decode, Exec};

impl CassandraStore {
    /// Records (or replaces) the address, `host:port`, at which `node_id` serves its API.
    pub async fn register_node(&self, node_id: &str, api_addr: &str, at: i64) -> StoreResult<()> {
        self.session
            .execute_unpaged(&self.st.node_put, (node_id, api_addr, at))
            .await
            .exec()?;
        Ok(())
    }

    /// The API address `node_id` registered, if any.
    pub async fn node_addr(&self, node_id: &str) -> StoreResult<Option<String>> {
        let res = self
            .session
            .execute_unpaged(&self.st.node_get, (node_id,))
            .await
            .exec()?;
        let row = res
            .into_rows_result()
            .decode()?
            .maybe_first_row::<(Option<String>,)>()
            .decode()?;
        Ok(row.and_then(|(a,)| a))
    }
}
