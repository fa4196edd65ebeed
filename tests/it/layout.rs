//! The layering of DESIGN.md, checked: the domain stays pure.

use std::path::Path;

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn the_domain_uses_no_runtime_no_database_no_async_and_no_clock() {
    let forbidden = [
        "actix",
        "sqlx",
        "tokio",
        "dashmap",
        "async fn",
        ".await",
        "SystemTime::now",
        "Instant::now",
        "Utc::now",
        "crate::store",
        "crate::actors",
        "crate::projections",
        "crate::http",
    ];
    let mut files = Vec::new();
    rust_files(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("src/domain"),
        &mut files,
    );
    assert!(!files.is_empty());
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for (number, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            for word in forbidden {
                assert!(
                    !code.contains(word),
                    "{}:{}: the domain must not use `{word}`",
                    file.display(),
                    number + 1
                );
            }
        }
    }
}
