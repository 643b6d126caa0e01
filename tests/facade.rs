//! The facade: feature `x` of `tower-patterns` gives module `tower_patterns::x`, the whole
//! public API of crate `tower-patterns-x`; `tower_patterns::tenant` is that module for the
//! tenant crate too, and it carries core's tenant vocabulary.

use std::{fs, path::Path};

fn read(path: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn each_pattern_crate_is_the_module_of_its_feature() {
    let lib = read("src/lib.rs");
    let manifest = read("Cargo.toml");
    let crates = Path::new(env!("CARGO_MANIFEST_DIR")).join("crates");
    let mut patterns = 0;
    for entry in fs::read_dir(crates).unwrap() {
        let dir = entry.unwrap().path();
        let Ok(own) = fs::read_to_string(dir.join("Cargo.toml")) else {
            continue;
        };
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        // Core is the root's vocabulary; an unpublished crate is no feature.
        if name == "core" || own.lines().any(|l| l.trim() == "publish = false") {
            continue;
        }
        patterns += 1;
        let feature = format!("\n{name} = [\"dep:tower-patterns-{name}\"");
        assert!(manifest.contains(&feature), "no feature `{name}`");
        let module = format!("pub use tower_patterns_{name} as {name};");
        assert!(lib.contains(&module), "src/lib.rs lacks `{module}`");
    }
    assert!(patterns >= 8, "{patterns}");
    // No crate goes by another name.
    for line in lib.lines() {
        if let Some(rest) = line.trim().strip_prefix("pub use tower_patterns_")
            && let Some((krate, alias)) = rest.trim_end_matches(';').split_once(" as ")
        {
            assert_eq!(krate, alias, "{line}");
        }
    }
}

#[cfg(feature = "tenant")]
#[test]
fn the_tenant_module_is_the_tenant_crate_with_cores_tenant_vocabulary() {
    use tower_patterns::tenant::{
        MAX_TENANT_ID_LEN, StaticTenants, TenancyLayer, TenantError, TenantErrorKind, TenantId,
    };

    // The same types as core's, not copies.
    let id: tower_patterns_core::tenant::TenantId = TenantId::new("acme").unwrap();
    assert_eq!(id.as_str(), "acme");
    let err: tower_patterns_core::tenant::TenantError =
        TenantError::new(TenantErrorKind::Unknown, "no such tenant");
    assert_eq!(
        err.kind(),
        tower_patterns_core::tenant::TenantErrorKind::Unknown
    );
    assert_eq!(
        MAX_TENANT_ID_LEN,
        tower_patterns_core::tenant::MAX_TENANT_ID_LEN
    );
    // And the tenant crate's own items, in the same module.
    let layer: Option<TenancyLayer<StaticTenants>> = None;
    assert!(layer.is_none());
}
