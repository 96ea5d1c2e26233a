//! The technician's page (docs/api.md, "The page"): three static files
//! embedded in the binary, so that it works offline on the appliance's
//! port with no CDN. It talks to the API like any client, with the login's
//! cookie and CSRF token.

use super::Out;

pub struct File {
    content_type: &'static str,
    bytes: &'static [u8],
}

const FILES: [(&str, File); 3] = [
    (
        "/",
        File {
            content_type: "text/html; charset=utf-8",
            bytes: include_bytes!("page/index.html"),
        },
    ),
    (
        "/app.js",
        File {
            content_type: "text/javascript; charset=utf-8",
            bytes: include_bytes!("page/app.js"),
        },
    ),
    (
        "/app.css",
        File {
            content_type: "text/css; charset=utf-8",
            bytes: include_bytes!("page/app.css"),
        },
    ),
];

/// The page's file at `path`, if it is one.
pub fn file(path: &str) -> Option<&'static File> {
    let path = if path == "/index.html" { "/" } else { path };
    FILES.iter().find(|(p, _)| *p == path).map(|(_, f)| f)
}

/// A file as it goes out: only this origin's scripts and styles, never in
/// another site's frame (a rollback button under someone else's page).
pub fn out(file: &File) -> Out {
    Out {
        status: 200,
        content_type: file.content_type,
        body: file.bytes.into(),
        headers: vec![
            "Content-Security-Policy: default-src 'self'; frame-ancestors 'none'; form-action 'self'".into(),
            "X-Frame-Options: DENY".into(),
            "Referrer-Policy: no-referrer".into(),
        ],
    }
}
