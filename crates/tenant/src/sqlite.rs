//! Shared tables on SQLite, through an API that cannot run without the tenant filter.
//!
//! SQLite has no row-level security, so isolation is the API's: [`Scoped`] is made for one
//! tenant and writes every statement itself, with `tenant_id = ?` in every `WHERE` and the
//! tenant's id in every inserted row. Callers give table and column names (checked to be
//! plain identifiers) and values (always bound, never spliced); there is no raw SQL to forget
//! the filter in, and no free-form condition to break out of it.
//!
//! ```
//! use rusqlite::{Connection, types::Value};
//! use tower_patterns_core::tenant::TenantId;
//! use tower_patterns_tenant::sqlite::Scoped;
//!
//! let conn = Connection::open_in_memory().unwrap();
//! conn.execute_batch("CREATE TABLE orders (tenant_id TEXT NOT NULL, id INTEGER, total INTEGER)").unwrap();
//! let acme = TenantId::new("acme").unwrap();
//! let globex = TenantId::new("globex").unwrap();
//!
//! Scoped::new(&conn, &acme).insert("orders", &[("id", Value::Integer(1)), ("total", Value::Integer(30))]).unwrap();
//! let rows = Scoped::new(&conn, &globex).select("orders", &["id", "total"], &[]).unwrap();
//! assert!(rows.is_empty(), "globex sees none of acme's orders");
//! ```

use rusqlite::{Connection, ToSql, types::Value};
use tower_patterns_core::tenant::TenantId;

/// Why a scoped statement was refused or failed.
#[derive(Debug)]
pub enum ScopedError {
    /// A table or column name is not a plain identifier, or names `tenant_id`.
    Name(String),
    /// SQLite failed.
    Sqlite(rusqlite::Error),
}

impl std::fmt::Display for ScopedError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Name(name) => write!(f, "{name:?} is not a usable table or column name"),
            Self::Sqlite(e) => write!(f, "sqlite: {e}"),
        }
    }
}

impl std::error::Error for ScopedError {}

impl From<rusqlite::Error> for ScopedError {
    fn from(e: rusqlite::Error) -> Self {
        Self::Sqlite(e)
    }
}

fn name(n: &str) -> Result<&str, ScopedError> {
    let ok = !n.is_empty()
        && n.len() <= 64
        && n.bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && !n.eq_ignore_ascii_case("tenant_id");
    if ok {
        Ok(n)
    } else {
        Err(ScopedError::Name(n.to_owned()))
    }
}

/// One tenant's view of shared tables (each with a `tenant_id TEXT` column).
#[derive(Debug)]
pub struct Scoped<'c> {
    conn: &'c Connection,
    tenant: &'c TenantId,
}

impl<'c> Scoped<'c> {
    /// `tenant`'s view over `conn`.
    pub const fn new(conn: &'c Connection, tenant: &'c TenantId) -> Self {
        Self { conn, tenant }
    }

    fn filter(
        &self,
        filters: &[(&str, Value)],
        first: usize,
    ) -> Result<(String, Vec<Value>), ScopedError> {
        let mut sql = format!("tenant_id = ?{first}");
        let mut params = vec![Value::Text(self.tenant.as_str().to_owned())];
        for (i, (col, value)) in filters.iter().enumerate() {
            sql.push_str(&format!(" AND {} = ?{}", name(col)?, first + 1 + i));
            params.push(value.clone());
        }
        Ok((sql, params))
    }

    /// The `columns` of the tenant's rows of `table` where every `filters` column equals its
    /// value.
    ///
    /// # Errors
    ///
    /// A [`ScopedError`] for a bad name or a failed query.
    pub fn select(
        &self,
        table: &str,
        columns: &[&str],
        filters: &[(&str, Value)],
    ) -> Result<Vec<Vec<Value>>, ScopedError> {
        let cols = columns
            .iter()
            .map(|c| name(c))
            .collect::<Result<Vec<_>, _>>()?;
        let (cond, params) = self.filter(filters, 1)?;
        let sql = format!(
            "SELECT {} FROM {} WHERE {cond}",
            cols.join(", "),
            name(table)?
        );
        let mut stmt = self.conn.prepare(&sql)?;
        let params: Vec<&dyn ToSql> = params.iter().map(|v| v as &dyn ToSql).collect();
        let rows = stmt.query_map(params.as_slice(), |row| {
            (0..cols.len()).map(|i| row.get::<_, Value>(i)).collect()
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Inserts a row of the tenant into `table`; `tenant_id` is set here and cannot be given.
    ///
    /// # Errors
    ///
    /// A [`ScopedError`] for a bad name (including `tenant_id`) or a failed statement.
    pub fn insert(&self, table: &str, values: &[(&str, Value)]) -> Result<usize, ScopedError> {
        let mut cols = vec!["tenant_id"];
        let mut params = vec![Value::Text(self.tenant.as_str().to_owned())];
        for (col, value) in values {
            cols.push(name(col)?);
            params.push(value.clone());
        }
        let marks: Vec<String> = (1..=cols.len()).map(|i| format!("?{i}")).collect();
        let sql = format!(
            "INSERT INTO {} ({}) VALUES ({})",
            name(table)?,
            cols.join(", "),
            marks.join(", ")
        );
        let params: Vec<&dyn ToSql> = params.iter().map(|v| v as &dyn ToSql).collect();
        Ok(self.conn.execute(&sql, params.as_slice())?)
    }

    /// Sets `set` on the tenant's rows of `table` matching `filters`; returns how many.
    ///
    /// # Errors
    ///
    /// A [`ScopedError`] for a bad name (`tenant_id` cannot be set) or a failed statement.
    pub fn update(
        &self,
        table: &str,
        set: &[(&str, Value)],
        filters: &[(&str, Value)],
    ) -> Result<usize, ScopedError> {
        let mut assignments = Vec::new();
        let mut params = Vec::new();
        for (i, (col, value)) in set.iter().enumerate() {
            assignments.push(format!("{} = ?{}", name(col)?, i + 1));
            params.push(value.clone());
        }
        let (cond, filter_params) = self.filter(filters, set.len() + 1)?;
        params.extend(filter_params);
        let sql = format!(
            "UPDATE {} SET {} WHERE {cond}",
            name(table)?,
            assignments.join(", ")
        );
        let params: Vec<&dyn ToSql> = params.iter().map(|v| v as &dyn ToSql).collect();
        Ok(self.conn.execute(&sql, params.as_slice())?)
    }

    /// Deletes the tenant's rows of `table` matching `filters`; returns how many.
    ///
    /// # Errors
    ///
    /// A [`ScopedError`] for a bad name or a failed statement.
    pub fn delete(&self, table: &str, filters: &[(&str, Value)]) -> Result<usize, ScopedError> {
        let (cond, params) = self.filter(filters, 1)?;
        let sql = format!("DELETE FROM {} WHERE {cond}", name(table)?);
        let params: Vec<&dyn ToSql> = params.iter().map(|v| v as &dyn ToSql).collect();
        Ok(self.conn.execute(&sql, params.as_slice())?)
    }
}
