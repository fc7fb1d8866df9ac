//! Policy packs: per (tenant, vertical) Cedar policy sets, compiled into the snapshot and
//! evaluated in pipeline stage 6 and by `POST /v1/authz/evaluate` (`forbid` wins).
//!
//! Placeholder interface: the Cedar work of issue 5 fills it in.

use super::model::PolicyPack;

/// A question to a vertical's policy pack.
#[derive(Debug, Clone)]
pub struct PackRequest<'a> {
    /// `Integration` (partner traffic) or `User` (admin / evaluate).
    pub principal_type: &'a str,
    pub principal_id: &'a str,
    /// `read`, `write` or an admin action.
    pub action: &'a str,
    pub resource: &'a str,
    pub tenant: &'a str,
    pub vertical: &'a str,
    /// Extra facts (scopes, data categories, route id…), a JSON object.
    pub context: serde_json::Value,
    /// Now, ms since the epoch (pack windows).
    pub now_ms: i64,
}

/// A pack's answer.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PackDecision {
    pub allowed: bool,
    /// The pack that answered.
    pub pack_id: String,
    /// Ids of the determining policies.
    pub reasons: Vec<String>,
    /// Fields the determining policies ask to mask.
    pub masked_fields: Vec<String>,
}

/// Every active pack, compiled.
#[derive(Debug, Clone, Default)]
pub struct CompiledPacks {}

impl CompiledPacks {
    /// Compiles the packs of a policy set (only `active` ones are kept).
    pub fn compile(_packs: &[PolicyPack]) -> Self {
        CompiledPacks {}
    }

    /// The answer of the active pack of (`req.tenant`, `req.vertical`), `None` when there is none.
    pub fn evaluate(&self, _req: &PackRequest) -> Option<PackDecision> {
        None
    }
}
