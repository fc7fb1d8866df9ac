//! The stored documents and their changes: kinds, sources, version preconditions, what a write
//! returns and how it fails.

use super::*;

/// The kinds of stored documents. The first five ([`DocKind::ENFORCED`]) make up the policy
/// snapshot ext_authz decides with; the rest serve the admin API only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DocKind {
    Tenant,
    Integration,
    Route,
    DenyRule,
    PolicyPack,
    PolicyChange,
    Role,
    Group,
    GroupMember,
    RoleAssignment,
    Webhook,
    SchemaMapping,
    Credential,
}

impl DocKind {
    /// The kinds compiled into the policy snapshot; a change to one bumps the policy version.
    pub const ENFORCED: [DocKind; 5] = [
        DocKind::Tenant,
        DocKind::Integration,
        DocKind::Route,
        DocKind::DenyRule,
        DocKind::PolicyPack,
    ];

    /// The `kind` column value.
    pub fn as_str(self) -> &'static str {
        match self {
            DocKind::Tenant => "tenant",
            DocKind::Integration => "integration",
            DocKind::Route => "route",
            DocKind::DenyRule => "deny_rule",
            DocKind::PolicyPack => "policy_pack",
            DocKind::PolicyChange => "policy_change",
            DocKind::Role => "role",
            DocKind::Group => "group",
            DocKind::GroupMember => "group_member",
            DocKind::RoleAssignment => "role_assignment",
            DocKind::Webhook => "webhook",
            DocKind::SchemaMapping => "schema_mapping",
            DocKind::Credential => "credential",
        }
    }

    /// Whether documents of this kind feed the policy snapshot.
    pub fn enforced(self) -> bool {
        DocKind::ENFORCED.contains(&self)
    }
}

/// Who wrote a document: the policy files or the admin API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    File,
    Api,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::File => "file",
            Source::Api => "api",
        }
    }
}

/// The precondition of one [`DocChange`] (ADM-8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// Whatever is stored (unconditional).
    Any,
    /// Nothing may be stored yet (create).
    Absent,
    /// The stored version must be exactly this (`If-Match`).
    Version(i64),
}

/// One document write: `doc` = canonical JSON text, `None` deletes.
#[derive(Debug, Clone, PartialEq)]
pub struct DocChange {
    pub kind: DocKind,
    pub id: String,
    pub tenant: Option<String>,
    /// Lifecycle state, stored in its own column for listing by status.
    pub status: Option<String>,
    pub doc: Option<String>,
    pub expect: Expect,
}

impl DocChange {
    /// Creates or replaces `kind`/`id` with `doc` (unconditional until [`DocChange::expect`]).
    pub fn put(kind: DocKind, id: &str, tenant: Option<&str>, doc: String) -> Self {
        DocChange {
            kind,
            id: id.to_owned(),
            tenant: tenant.map(str::to_owned),
            status: None,
            doc: Some(doc),
            expect: Expect::Any,
        }
    }

    /// Deletes `kind`/`id`.
    pub fn delete(kind: DocKind, id: &str) -> Self {
        DocChange {
            kind,
            id: id.to_owned(),
            tenant: None,
            status: None,
            doc: None,
            expect: Expect::Any,
        }
    }

    /// Sets the precondition.
    pub fn expect(mut self, expect: Expect) -> Self {
        self.expect = expect;
        self
    }

    /// Sets the lifecycle state column.
    pub fn status(mut self, status: impl Into<String>) -> Self {
        self.status = Some(status.into());
        self
    }
}

/// A stored document.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredDoc {
    pub kind: String,
    pub id: String,
    pub tenant: Option<String>,
    /// Canonical JSON text.
    pub doc: String,
    pub source: String,
    /// Resource version (ETag), from 1.
    pub version: i64,
    pub status: Option<String>,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339.
    pub updated_at: String,
}

/// One row of a document's history.
#[derive(Debug, Clone, PartialEq)]
pub struct DocVersion {
    pub version: i64,
    /// `None`: the document was deleted at this version.
    pub doc: Option<String>,
    pub status: Option<String>,
    pub source: String,
    pub actor: String,
    /// RFC 3339.
    pub time: String,
}

/// One row of `integration_activity` (ONB-7, ONB-AUD-4). Times in ms since the epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IntegrationActivity {
    pub last_success_ms: Option<i64>,
    pub last_handshake_ms: Option<i64>,
    /// `unknown` until the first handshake, then `healthy`.
    pub health: String,
    pub webhook_failures: i64,
}

/// Result of [`Store::write_documents`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    /// Policy version after the write (unchanged unless an enforced kind changed).
    pub policy_version: i64,
    /// New version of each change's document, in order; 0 for deletions.
    pub versions: Vec<i64>,
}

/// Why [`Store::write_documents`] wrote nothing.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// A precondition failed: `current` is the stored version (`None`: absent).
    #[error("{} `{id}` is at version {}, not the one expected", kind.as_str(), current.map_or("none".to_owned(), |v| v.to_string()))]
    Conflict {
        kind: DocKind,
        id: String,
        current: Option<i64>,
    },
    /// Archived documents are immutable (INT-6.2-5).
    #[error("{} `{id}` is archived and accepts no change", kind.as_str())]
    Archived { kind: DocKind, id: String },
    /// The enforced set would be invalid after the write.
    #[error("{0}")]
    Invalid(PolicyErrors),
    #[error("store unavailable: {0}")]
    Store(#[from] sqlx::Error),
}
