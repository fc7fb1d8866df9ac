//! Generated code of scp-pep's own gRPC services (`proto/`, compiled by `build.rs`).
//!
//! - [`scp::pep::v1`]: `scp.pep.v1.DecisionLog` (the live audit-log tail, served by
//!   [`crate::tail`]): `TailRequest`, `TailEvent`, `decision_log_server`, `decision_log_client`.

/// `scp.*` packages.
pub mod scp {
    /// `scp.pep.*` packages.
    pub mod pep {
        /// `scp.pep.v1`: the decision-log tail.
        #[allow(clippy::all, missing_docs)]
        pub mod v1 {
            tonic::include_proto!("scp.pep.v1");
        }
    }
}
