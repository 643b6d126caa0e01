//! A fresh database on the benchmark's PostgreSQL, so no run sees another's rows.

/// Creates database `tp_bench_<uuid>` on the server of `url` and returns its URL.
///
/// # Panics
///
/// When the server does not answer or refuses the database.
pub async fn fresh_database(url: &str) -> String {
    let (admin, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("PostgreSQL answers");
    tokio::spawn(conn);
    let db = format!("tp_bench_{}", uuid::Uuid::now_v7().simple());
    admin
        .batch_execute(&format!("CREATE DATABASE {db}"))
        .await
        .expect("create the bench database");
    let base = url.rsplit_once('/').map_or(url, |(b, _)| b);
    format!("{base}/{db}")
}
