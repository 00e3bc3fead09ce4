//! Driver errors mapped onto [`StoreError`]: anything that may succeed when retried later
//! (timeouts, unavailable replicas, overload, broken connections) is
//! [`StoreError::Unavailable`]; rows that do not decode are [`StoreError::Corrupt`].

use kairos_core::store::StoreError;
use scylla::errors::{
    DbError, ExecutionError, IntoRowsResultError, MaybeFirstRowError, NewSessionError,
    NextRowError, PagerExecutionError, PrepareError, RequestAttemptError, RowsError,
};

fn attempt_err(e: &RequestAttemptError) -> StoreError {
    match e {
        RequestAttemptError::DbError(db, msg) => match db {
            DbError::Unavailable { .. }
            | DbError::Overloaded
            | DbError::IsBootstrapping
            | DbError::ReadTimeout { .. }
            | DbError::WriteTimeout { .. }
            | DbError::ReadFailure { .. }
            | DbError::WriteFailure { .. }
            | DbError::RateLimitReached { .. }
            | DbError::TruncateError
            | DbError::ServerError => StoreError::Unavailable(format!("cassandra: {db}: {msg}")),
            _ => StoreError::Other(format!("cassandra: {db}: {msg}")),
        },
        RequestAttemptError::CqlResultParseError(_) => {
            StoreError::Corrupt(format!("cassandra result does not parse: {e}"))
        }
        RequestAttemptError::SerializationError(_)
        | RequestAttemptError::CqlRequestSerialization(_) => {
            StoreError::Other(format!("cassandra request: {e}"))
        }
        _ => StoreError::Unavailable(format!("cassandra connection: {e}")),
    }
}

pub(crate) fn exec_err(e: ExecutionError) -> StoreError {
    match &e {
        ExecutionError::BadQuery(_) => StoreError::Other(format!("cassandra: {e}")),
        ExecutionError::LastAttemptError(a) => attempt_err(a),
        ExecutionError::PrepareError(p) => prepare_err_ref(p),
        _ => StoreError::Unavailable(format!("cassandra: {e}")),
    }
}

fn prepare_err_ref(e: &PrepareError) -> StoreError {
    match e {
        PrepareError::AllAttemptsFailed { first_attempt } => attempt_err(first_attempt),
        _ => StoreError::Unavailable(format!("cassandra prepare: {e}")),
    }
}

pub(crate) fn prepare_err(e: PrepareError) -> StoreError {
    prepare_err_ref(&e)
}

pub(crate) fn session_err(e: NewSessionError) -> StoreError {
    StoreError::Unavailable(format!("cannot connect to cassandra: {e}"))
}

/// Any failure to turn a response into typed rows: the stored data is not what this build
/// expects.
pub(crate) fn decode_err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("cassandra row does not decode: {e}"))
}

pub(crate) trait Exec<T> {
    fn exec(self) -> Result<T, StoreError>;
}

impl<T> Exec<T> for Result<T, ExecutionError> {
    fn exec(self) -> Result<T, StoreError> {
        self.map_err(exec_err)
    }
}

pub(crate) trait Decode<T> {
    fn decode(self) -> Result<T, StoreError>;
}

macro_rules! decode_impl {
    ($($t:ty),*) => {$(
        impl<T> Decode<T> for Result<T, $t> {
            fn decode(self) -> Result<T, StoreError> {
                self.map_err(decode_err)
            }
        }
    )*};
}
decode_impl!(
    IntoRowsResultError,
    RowsError,
    MaybeFirstRowError,
    scylla::errors::DeserializationError,
    scylla::errors::TypeCheckError
);

/// A failure while paging: the next page not arriving is transient, a row that does not
/// decode is corruption.
pub(crate) fn row_err(e: NextRowError) -> StoreError {
    match e {
        NextRowError::RowDeserializationError(d) => decode_err(d),
        e => StoreError::Unavailable(format!("cassandra paging: {e}")),
    }
}

pub(crate) fn pager_err(e: PagerExecutionError) -> StoreError {
    match e {
        PagerExecutionError::PrepareError(p) => prepare_err(p),
        PagerExecutionError::SerializationError(s) => StoreError::Other(format!("cassandra: {s}")),
        e => StoreError::Unavailable(format!("cassandra paging: {e}")),
    }
}
