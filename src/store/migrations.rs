//! The schema migrations, embedded in the binary at compile time (`migrations/sqlite`,
//! `migrations/postgres`) and run at start.

/// One embedded schema migration: version, description, SQL.
pub(super) type EmbeddedMigration = (i64, &'static str, &'static str);

/// The SQLite schema (`migrations/sqlite/NNNN_<description>.sql`), embedded at compile time.
pub(super) const SQLITE_MIGRATIONS: &[EmbeddedMigration] = &[
    (
        1,
        "policy",
        include_str!("../../migrations/sqlite/0001_policy.sql"),
    ),
    (
        2,
        "audit",
        include_str!("../../migrations/sqlite/0002_audit.sql"),
    ),
    (
        3,
        "consent",
        include_str!("../../migrations/sqlite/0003_consent.sql"),
    ),
    (
        4,
        "admin",
        include_str!("../../migrations/sqlite/0004_admin.sql"),
    ),
    (
        5,
        "secrets",
        include_str!("../../migrations/sqlite/0005_secrets.sql"),
    ),
    (
        6,
        "outbox",
        include_str!("../../migrations/sqlite/0006_outbox.sql"),
    ),
];

/// The PostgreSQL schema (`migrations/postgres/NNNN_<description>.sql`), embedded at compile time.
pub(super) const POSTGRES_MIGRATIONS: &[EmbeddedMigration] = &[
    (
        1,
        "policy",
        include_str!("../../migrations/postgres/0001_policy.sql"),
    ),
    (
        2,
        "audit",
        include_str!("../../migrations/postgres/0002_audit.sql"),
    ),
    (
        3,
        "consent",
        include_str!("../../migrations/postgres/0003_consent.sql"),
    ),
    (
        4,
        "admin",
        include_str!("../../migrations/postgres/0004_admin.sql"),
    ),
    (
        5,
        "secrets",
        include_str!("../../migrations/postgres/0005_secrets.sql"),
    ),
    (
        6,
        "outbox",
        include_str!("../../migrations/postgres/0006_outbox.sql"),
    ),
];

/// A migrator over embedded migrations. It records in `_sqlx_migrations` exactly what
/// `sqlx::migrate!` did (version, description, SHA-384 checksum of the file, `-- no-transaction`
/// files outside a transaction), so databases created by earlier builds keep migrating; built by
/// hand so that the build needs no sqlx proc-macro, which compiled a second copy of the sqlx
/// drivers and of SQLite for the build host. A test compares it with the directory.
pub(super) fn migrator(files: &[EmbeddedMigration]) -> sqlx::migrate::Migrator {
    use sqlx::migrate::{Migration, MigrationType, Migrator};
    Migrator::with_migrations(
        files
            .iter()
            .map(|&(version, description, sql)| {
                Migration::new(
                    version,
                    description.into(),
                    MigrationType::Simple,
                    sqlx::SqlStr::from_static(sql),
                    sql.starts_with("-- no-transaction"),
                )
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The embedded migrations are exactly the files of `migrations/<store>/`, with the
    /// version, description, checksum and transaction mode `sqlx` derives from each file, so
    /// a database migrated by an earlier build (which used `sqlx::migrate!`) sees no change.
    #[tokio::test]
    async fn embedded_migrations_match_the_directories() {
        for (dir, files) in [
            ("sqlite", SQLITE_MIGRATIONS),
            ("postgres", POSTGRES_MIGRATIONS),
        ] {
            let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("migrations")
                .join(dir);
            let from_dir = sqlx::migrate::Migrator::new(path).await.unwrap();
            let embedded = migrator(files);
            let shape = |m: &sqlx::migrate::Migrator| -> Vec<(i64, String, Vec<u8>, bool)> {
                m.iter()
                    .map(|x| {
                        (
                            x.version,
                            x.description.to_string(),
                            x.checksum.to_vec(),
                            x.no_tx,
                        )
                    })
                    .collect()
            };
            assert_eq!(shape(&embedded), shape(&from_dir), "migrations/{dir}");
            assert!(!files.is_empty());
        }
    }
}
