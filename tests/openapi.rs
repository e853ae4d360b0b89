//! Issue 13: the OpenAPI 3.1 document (docs/openapi.json, served at /openapi.json) is held to
//! the real server: every route the router serves is in it with exactly the methods it serves
//! (routes from `forkpool::routes::ops::ENDPOINTS`, the table the router is built from; methods
//! probed on the router in the test process), and real responses of every endpoint, successes and errors,
//! validate against the schema the document gives for their status and content type.
//!
//! What needs no process boundary (the document served, the methods routed, the property
//! tests) calls the router in the test process ([`App`]); the rest starts the binary.
//!
//! Tests marked "needs the real src/prime.rs" hold a worker busy with `common::slow_prime()`.

use crate::common;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use common::{signal, slow_prime, wait_until, App, Http, Response, Server};
use forkpool::routes::ops::{openapi_document, ENDPOINTS, OPENAPI, OPENAPI_MAX_DIGITS};
use serde_json::{json, Value};

/// Methods sent to every route to find which ones it serves (405 means not served). HEAD is
/// left out: HTTP serves it wherever GET is, and the document says so once.
const PROBED: [&str; 7] = ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE"];

/// The operation keys a path item may have (OpenAPI 3.1 §4.8.9).
const OPERATIONS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

fn document() -> Value {
    serde_json::from_str(OPENAPI).expect("docs/openapi.json is JSON")
}

/// Follows a local `$ref` (`#/components/...`) to what it names; anything else is itself.
fn resolve<'a>(doc: &'a Value, value: &'a Value) -> &'a Value {
    match value.get("$ref").and_then(Value::as_str) {
        Some(reference) => {
            let pointer = reference
                .strip_prefix('#')
                .unwrap_or_else(|| panic!("{reference} is not a local reference"));
            let target = doc
                .pointer(pointer)
                .unwrap_or_else(|| panic!("{reference} names nothing in the document"));
            resolve(doc, target)
        }
        None => value,
    }
}

/// The response object that the document promises for `status` to `method path`: the
/// operation's own when it exists, else `NotFound` for an undocumented path and
/// `MethodNotAllowed` for an undocumented method, as its description says.
fn documented_response<'a>(doc: &'a Value, method: &str, path: &str, status: u16) -> &'a Value {
    let path = path.split('?').next().unwrap();
    let fallback = |name: &str, expected: u16| {
        assert_eq!(status, expected, "{method} {path}: undocumented, so {name}");
        resolve(doc, &doc["components"]["responses"][name])
    };
    let Some(item) = doc["paths"].get(path) else {
        return fallback("NotFound", 404);
    };
    let Some(operation) = item.get(method.to_ascii_lowercase()) else {
        return fallback("MethodNotAllowed", 405);
    };
    let response = operation["responses"]
        .get(status.to_string())
        .unwrap_or_else(|| panic!("{method} {path}: status {status} is not in the document"));
    resolve(doc, response)
}

/// Validates `instance` against `schema`, a schema object of the document whose references
/// point into `#/components`: it is compiled as a JSON Schema 2020-12 (OpenAPI 3.1's dialect)
/// with the document's components beside it, so that those references resolve.
fn validate(doc: &Value, schema: &Value, instance: &Value) -> Result<(), String> {
    let mut root = schema.clone();
    root["components"] = doc["components"].clone();
    let validator = jsonschema::draft202012::new(&root)
        .unwrap_or_else(|e| panic!("invalid schema {schema}: {e}"));
    let errors: Vec<String> = validator
        .iter_errors(instance)
        .map(|e| format!("at {:?}: {e}", e.instance_path().as_str()))
        .collect();
    match errors.is_empty() {
        true => Ok(()),
        false => Err(errors.join("; ")),
    }
}

/// Asserts that `response` to `method path` is what the document promises: its status is
/// documented, its content type is one the document gives for that status, and its body
/// validates against that schema (JSON bodies as JSON, text bodies as one string).
fn assert_documented(doc: &Value, method: &str, path: &str, response: &Response) {
    let documented = documented_response(doc, method, path, response.status);
    assert_matches(doc, documented, &format!("{method} {path}"), response);
}

/// Asserts that `response` has a content type that `documented` (a response object) gives and
/// a body and headers that validate against it.
fn assert_matches(doc: &Value, documented: &Value, request: &str, response: &Response) {
    let what = format!("{request} -> {}", response.status);
    let content_type = response
        .header("content-type")
        .unwrap_or_else(|| panic!("{what}: no content-type"));
    let media = documented["content"].get(content_type).unwrap_or_else(|| {
        panic!(
            "{what}: content-type {content_type:?} is not among {:?}",
            documented["content"]
                .as_object()
                .map(|c| c.keys().collect::<Vec<_>>())
        )
    });
    let instance = match content_type.starts_with("application/json") {
        true => response.json(),
        false => Value::String(
            String::from_utf8(response.body.clone())
                .unwrap_or_else(|_| panic!("{what}: text body is not UTF-8")),
        ),
    };
    if let Err(errors) = validate(doc, &media["schema"], &instance) {
        panic!("{what}: body does not match the document: {errors}\nbody: {instance}");
    }
    if let Some(headers) = documented.get("headers").and_then(Value::as_object) {
        for (name, header) in headers {
            let header = resolve(doc, header);
            let value = response.header(&name.to_ascii_lowercase());
            if header["required"] == true {
                assert!(value.is_some(), "{what}: no {name} header");
            }
            if let Some(value) = value {
                let value: Value = match header["schema"]["type"] == "integer" {
                    true => value.parse::<u64>().map_or(value.into(), Value::from),
                    false => value.into(),
                };
                validate(doc, &header["schema"], &value)
                    .unwrap_or_else(|e| panic!("{what}: header {name}: {e}"));
            }
        }
    }
}

/// Sends the request, asserts its status, and asserts that the response is documented.
fn check(
    server: &impl Http,
    doc: &Value,
    (method, path, body): (&str, &str, &str),
    status: u16,
) -> Response {
    let headers: &[(&str, &str)] = match body.is_empty() {
        true => &[],
        false => &[("content-type", "application/json")],
    };
    let response = server.request(method, path, headers, body.as_bytes());
    assert_eq!(
        response.status,
        status,
        "{method} {path}: {}",
        response.text()
    );
    assert_documented(doc, method, path, &response);
    response
}

/// Sends `raw` bytes to `addr` as they are, then reads the response to the end.
fn exchange(addr: SocketAddr, raw: &[u8]) -> Response {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    // The server may answer (and close) before it has read everything: a refused head.
    let _ = stream.write_all(raw);
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    Response::parse(&answer)
}

/// A listing root with a subdirectory and a symlink that leads out of it.
fn ls_root() -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir(root.path().join("sub")).unwrap();
    std::fs::write(root.path().join("sub/file"), "x").unwrap();
    std::os::unix::fs::symlink("/", root.path().join("out")).unwrap();
    root
}

/// The router in the test process, for what the handlers answer.
fn app(root: &tempfile::TempDir, extra: &[&str]) -> App {
    let root = root.path().to_str().unwrap();
    App::start(&[&["--ls-root", root, "--workers", "1"], extra].concat())
}

fn start(root: &tempfile::TempDir, extra: &[&str]) -> Server {
    let root = root.path().to_str().unwrap();
    let args = [&["--ls-root", root, "--workers", "1"], extra].concat();
    let server = Server::start(&args);
    server.wait_for_workers(1);
    server
}

/// Polls /status until the one worker is busy and returns its pid.
fn wait_busy(server: &Server) -> u32 {
    wait_until(Duration::from_secs(30), || {
        let status = server.get("/status").json();
        let worker = &status["workers"][0];
        (worker["state"] == "busy").then(|| worker["pid"].as_u64().unwrap() as u32)
    })
    .expect("the slow job was never seen running")
}

// ---------------------------------------------------------------------------------------------

#[test]
fn the_document_is_openapi_3_1_served_verbatim_and_listed_in_the_index() {
    let doc = document();
    assert_eq!(doc["openapi"], "3.1.0");
    assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));
    let root = ls_root();
    let server = app(&root, &[]);
    let response = check(&server, &doc, ("GET", "/openapi.json", ""), 200);
    assert_eq!(
        response.body,
        OPENAPI.as_bytes(),
        "the default --max-digits: as kept"
    );
    let other = app(&root, &["--max-digits", "25"]);
    let served: Value = other.get("/openapi.json").json();
    let pattern = served
        .pointer("/components/parameters/number/schema/pattern")
        .unwrap();
    assert!(
        pattern.as_str().unwrap().contains("[0-9]{1,25}"),
        "{pattern}"
    );
    assert_eq!(
        served,
        serde_json::from_str::<Value>(&openapi_document(25)).unwrap()
    );
    let kept = OPENAPI.matches(OPENAPI_MAX_DIGITS).count();
    assert_eq!(
        kept, 2,
        "the query's and the body's `number` patterns carry the default"
    );
    let index = check(&server, &doc, ("GET", "/", ""), 200).text();
    assert!(index.contains("GET  /openapi.json"), "{index}");
}

#[test]
fn every_route_the_router_serves_is_in_the_document_with_exactly_the_methods_it_serves() {
    let doc = document();
    let documented: BTreeSet<&str> = doc["paths"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let routed: BTreeSet<&str> = ENDPOINTS.iter().map(|e| e.path).collect();
    assert_eq!(
        routed, documented,
        "routes (left) and document paths (right)"
    );

    let root = ls_root();
    let server = app(&root, &[]);
    for endpoint in ENDPOINTS {
        let path = endpoint.path;
        // Every answer, 405 or not, must itself be documented.
        let served: BTreeSet<String> = PROBED
            .iter()
            .filter(|method| {
                let response = server.request(method, path, &[], b"");
                assert_documented(&doc, method, path, &response);
                response.status != 405
            })
            .map(|method| method.to_ascii_lowercase())
            .collect();
        let item = doc["paths"][path].as_object().unwrap();
        let in_document: BTreeSet<String> = item
            .keys()
            .filter(|key| OPERATIONS.contains(&key.as_str()))
            .cloned()
            .collect();
        assert_eq!(
            served, in_document,
            "{path}: served (left), documented (right)"
        );
    }
}

#[test]
fn with_an_admin_listener_the_two_listeners_together_serve_exactly_the_document() {
    let doc = document();
    let root = ls_root();
    let server = start(&root, &["--admin-listen", "127.0.0.1:0"]);
    let admin = server.admin.expect("the admin address is printed");
    let mut served = BTreeSet::new();
    for path in doc["paths"].as_object().unwrap().keys() {
        for (listener, addr) in [("public", server.addr), ("admin", admin)] {
            let request = format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
            let response = exchange(addr, request.as_bytes());
            match (listener, response.status) {
                // The admin listener routes only its own paths: the rest are its fallback.
                ("admin", 404) => {
                    let not_found = resolve(&doc, &doc["components"]["responses"]["NotFound"]);
                    assert_matches(&doc, not_found, &format!("GET {path} (admin)"), &response);
                }
                // The public one's 404 for a route moved away is in the document.
                (_, 404) => assert_documented(&doc, "GET", path, &response),
                _ => {
                    assert_documented(&doc, "GET", path, &response);
                    served.insert(path.clone());
                }
            }
        }
    }
    let documented: BTreeSet<String> = doc["paths"].as_object().unwrap().keys().cloned().collect();
    assert_eq!(
        served, documented,
        "served on either listener (left), documented (right)"
    );
}

#[test]
fn a_body_that_stalls_is_408_as_documented() {
    let doc = document();
    let root = ls_root();
    let server = start(&root, &["--body-timeout", "300ms"]);
    // Ten bytes promised, four sent.
    let stalled = b"POST /isprime HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
                    content-length: 10\r\n\r\n{\"nu";
    let response = exchange(server.addr, stalled);
    assert_eq!(response.status, 408, "{}", response.text());
    assert_documented(&doc, "POST", "/isprime", &response);
}

#[test]
fn every_operation_documents_500_and_503_and_every_reference_resolves() {
    let doc = document();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            for status in ["200", "500", "503"] {
                let response = &operation["responses"][status];
                assert!(!response.is_null(), "{method} {path} lacks {status}");
                // Each one resolves to content with a schema that compiles (`validate` panics
                // on one that does not; whether null matches it is beside the point).
                for media in resolve(&doc, response)["content"]
                    .as_object()
                    .unwrap()
                    .values()
                {
                    let _matches_null = validate(&doc, &media["schema"], &Value::Null);
                }
            }
        }
    }
    let post = &doc["paths"]["/isprime"]["post"]["responses"];
    for status in ["400", "408", "413"] {
        assert!(!post[status].is_null(), "POST /isprime lacks {status}");
    }
    // Every `$ref` anywhere names something.
    fn walk(doc: &Value, value: &Value) {
        match value {
            Value::Object(map) => {
                resolve(doc, value);
                map.values().for_each(|v| walk(doc, v));
            }
            Value::Array(items) => items.iter().for_each(|v| walk(doc, v)),
            _ => {}
        }
    }
    walk(&doc, &doc);
}

#[test]
fn the_checks_reject_what_the_document_does_not_promise() {
    let doc = document();
    let at = |method, path, status| {
        let response = documented_response(&doc, method, path, status);
        response["content"]["application/json"]["schema"].clone()
    };
    // An error whose `status` differs from the HTTP status, or with an extra field.
    let bad_request = at("GET", "/isprime", 400);
    let error = |code: &str, status: u16| json!({"error": "x", "code": code, "status": status});
    assert!(validate(&doc, &bad_request, &error("number_negative", 400)).is_ok());
    assert!(validate(&doc, &bad_request, &error("number_negative", 404)).is_err());
    let mut extra = error("number_negative", 400);
    extra["n"] = json!(1);
    assert!(validate(&doc, &bad_request, &extra).is_err());
    assert!(validate(
        &doc,
        &bad_request,
        &json!({"error": "", "code": "number_negative", "status": 400})
    )
    .is_err());
    // No code, a code that does not exist, or one this response cannot carry.
    assert!(validate(&doc, &bad_request, &json!({"error": "x", "status": 400})).is_err());
    assert!(validate(&doc, &bad_request, &error("number_weird", 400)).is_err());
    assert!(validate(&doc, &bad_request, &error("outside_root", 400)).is_err());
    // A verdict with the number as a JSON number, or an unknown method.
    let verdict = at("GET", "/isprime", 200);
    let good = json!({"number": "7", "isPrime": true, "method": "deterministic",
                      "time": "0.31ms", "compute_ms": 0.01});
    assert!(validate(&doc, &verdict, &good).is_ok());
    let mut bad = good.clone();
    bad["number"] = json!(7);
    assert!(validate(&doc, &verdict, &bad).is_err());
    bad = good.clone();
    bad["method"] = json!("guess");
    assert!(validate(&doc, &verdict, &bad).is_err());
    // A status the operation does not list, and undocumented paths and methods.
    let undocumented =
        std::panic::catch_unwind(|| documented_response(&doc, "GET", "/healthz", 418));
    assert!(undocumented.is_err());
    let not_found = documented_response(&doc, "GET", "/nope", 404);
    assert_eq!(
        not_found,
        resolve(&doc, &doc["components"]["responses"]["NotFound"])
    );
    let wrong_method = std::panic::catch_unwind(|| documented_response(&doc, "PUT", "/ls", 404));
    assert!(
        wrong_method.is_err(),
        "a PUT to a documented path can only be a 405"
    );
}

#[test]
fn successes_and_client_errors_of_every_endpoint_validate_against_the_document() {
    let doc = document();
    let root = ls_root();
    let server = start(&root, &["--max-digits", "50"]);
    let too_long = "1".repeat(51);
    let too_long_get = format!("/isprime?number={too_long}");
    let too_long_post = format!("{{\"number\": \"{too_long}\"}}");
    // Over the body limit (`--max-digits` plus 16 KiB), so refused before it is read.
    let huge_body = format!("{{\"number\": \"7\", \"pad\": \"{}\"}}", "x".repeat(20_000));
    let cases: Vec<((&str, &str, &str), u16)> = vec![
        (("GET", "/", ""), 200),
        (("GET", "/testrequest", ""), 200),
        (("GET", "/healthz", ""), 200),
        (("GET", "/readyz", ""), 200),
        (("GET", "/status", ""), 200),
        (("GET", "/openapi.json", ""), 200),
        (("GET", "/isprime?number=7", ""), 200),
        (("GET", "/isprime?number=18446744073709551629", ""), 200),
        (("POST", "/isprime", "{\"number\": \"+0097\"}"), 200),
        // A bare JSON integer too long for any float.
        (
            (
                "POST",
                "/isprime",
                "{\"number\": 170141183460469231731687303715884105727}",
            ),
            200,
        ),
        (("GET", "/isprime", ""), 400),
        (("GET", "/isprime?number=abc", ""), 400),
        (("GET", "/isprime?number=7&number=8", ""), 400),
        (("POST", "/isprime", "[7]"), 400),
        (("POST", "/isprime", "{\"number\": -7}"), 400),
        (("GET", &too_long_get, ""), 413),
        (("POST", "/isprime", &too_long_post), 413),
        (("POST", "/isprime", &huge_body), 413),
        (("GET", "/ls", ""), 200),
        (("GET", "/ls?directory=/sub", ""), 200),
        (("GET", "/ls?directory=/sub&directory=/", ""), 400),
        (("GET", "/ls?directory=/out", ""), 403),
        (("GET", "/ls?directory=/nope", ""), 404),
        (("GET", "/nope", ""), 404),
        (("GET", "/isprime/7", ""), 404),
        (("DELETE", "/status", ""), 405),
        (("PUT", "/isprime", ""), 405),
        // Last, so that it has seen every kind of request above.
        (("GET", "/metrics", ""), 200),
    ];
    for (request, status) in cases {
        check(&server, &doc, request, status);
    }
    let listing = check(&server, &doc, ("GET", "/ls?directory=/sub", ""), 200);
    assert!(listing.complete && listing.text().contains(" file\n"));
}

/// Needs the real src/prime.rs.
#[test]
fn pool_errors_502_503_504_validate_against_the_document() {
    let doc = document();
    let root = ls_root();
    let slow = format!("{{\"number\": \"{}\"}}", slow_prime());

    // 504: the job outlives --job-timeout.
    let server = start(&root, &["--job-timeout", "200ms"]);
    check(&server, &doc, ("POST", "/isprime", &slow), 504);
    drop(server);

    // 503 (queue full) and 502 (worker killed mid-job), with one worker and a queue of one.
    let server = start(&root, &["--queue", "1"]);
    std::thread::scope(|s| {
        let running = s.spawn(|| server.post_json("/isprime", &slow));
        let pid = wait_busy(&server);
        let queued = server.send_job(&slow_prime());
        wait_until(Duration::from_secs(10), || {
            let status = server.get("/status").json();
            (status["queue_depth"] == 1).then_some(())
        })
        .expect("the second job was never queued");
        let full = check(&server, &doc, ("POST", "/isprime", &slow), 503);
        assert_eq!(full.header("retry-after"), Some("1"));
        signal(pid, "KILL");
        let died = running.join().unwrap();
        assert_eq!(died.status, 502, "{}", died.text());
        assert_documented(&doc, "POST", "/isprime", &died);
        drop(queued);
    });
}

#[test]
fn readiness_and_shutdown_503s_validate_against_the_document() {
    let doc = document();
    let root = ls_root();
    // No worker can start: /readyz is 503; once the starts have failed enough times, jobs are
    // refused at once, and /status says why.
    let root_arg = root.path().to_str().unwrap();
    let server = Server::with(&[
        "--ls-root",
        root_arg,
        "--worker-program",
        "/bin/false",
        "--worker-start-failures",
        "2",
    ])
    .unready()
    .start();
    check(&server, &doc, ("GET", "/readyz", ""), 503);
    wait_until(Duration::from_secs(10), || {
        (server.get("/status").json()["pool"]["health"]["state"] == "unavailable").then_some(())
    })
    .expect("the pool never became unavailable");
    check(&server, &doc, ("GET", "/readyz", ""), 503);
    let refused = check(&server, &doc, ("GET", "/isprime?number=7", ""), 503);
    assert_eq!(refused.header("retry-after"), Some("5"));
    check(&server, &doc, ("GET", "/status", ""), 200);
    drop(server);

    // Shutting down: readiness is off while the listener still serves, jobs included (a load
    // balancer that has not noticed the drain yet must not see its requests fail).
    let server = start(&root, &["--shutdown-delay", "5s"]);
    server.terminate();
    wait_until(Duration::from_secs(20), || {
        (server.get("/readyz").status == 503).then_some(())
    })
    .expect("/readyz never went to 503 after SIGTERM");
    check(&server, &doc, ("GET", "/readyz", ""), 503);
    check(
        &server,
        &doc,
        ("POST", "/isprime", "{\"number\": \"7\"}"),
        200,
    );
    check(&server, &doc, ("GET", "/isprime?number=7", ""), 200);
}

#[test]
fn a_busy_ls_503_validates_against_the_document() {
    let doc = document();
    let root = ls_root();
    // A stand-in `ls` that holds the only listing slot for a while.
    let bin = tempfile::tempdir().unwrap();
    let ls = bin.path().join("ls");
    common::write_executable(&ls, b"#!/bin/sh\nexec sleep 5\n");
    let path = format!(
        "{}:{}",
        bin.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let root_arg = root.path().to_str().unwrap();
    let server = Server::with(&[
        "--ls-root",
        root_arg,
        "--workers",
        "1",
        "--ls-max-concurrent",
        "1",
    ])
    .env(&[("PATH", &path)])
    .start();
    let held: TcpStream = server.send("GET", "/ls", &[], b"");
    wait_until(Duration::from_secs(10), || {
        let metrics = server.get("/metrics").text();
        metrics.contains("forkpool_ls_running 1").then_some(())
    })
    .expect("the stand-in ls never ran");
    let busy = check(&server, &doc, ("GET", "/ls?directory=/sub", ""), 503);
    assert_eq!(busy.header("retry-after"), Some("1"));
    drop(held);
}

/// Every response of the document whose body is an error: (where, status, the codes it lists).
fn error_responses(doc: &Value) -> Vec<(String, u16, Vec<String>)> {
    let mut found = Vec::new();
    let mut add = |place: String, response: &Value| {
        let response = resolve(doc, response);
        let Some(schema) = response.pointer("/content/application~1json/schema/allOf/1") else {
            return;
        };
        let status = schema["properties"]["status"]["const"]
            .as_u64()
            .expect("a status") as u16;
        let codes = schema["properties"]["code"]["enum"]
            .as_array()
            .unwrap_or_else(|| panic!("{place}: no code enum"))
            .iter()
            .map(|c| c.as_str().unwrap().to_owned())
            .collect();
        found.push((place, status, codes));
    };
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            for (status, response) in operation["responses"].as_object().unwrap() {
                add(format!("{method} {path} {status}"), response);
            }
        }
    }
    for (name, response) in doc["components"]["responses"].as_object().unwrap() {
        add(name.clone(), response);
    }
    found
}

#[test]
fn every_error_code_is_documented_with_its_status_and_every_response_lists_its_codes() {
    use forkpool::error::ErrorCode;
    let doc = document();
    let code = &doc["components"]["schemas"]["Error"]["properties"]["code"];
    let listed: Vec<&str> = code["enum"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    let all: Vec<&str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
    assert_eq!(
        listed, all,
        "Error.code's enum (left) and ErrorCode::ALL (right)"
    );
    let description = code["description"].as_str().unwrap();
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    // Its lines are wrapped anywhere.
    let readme = readme.split_whitespace().collect::<Vec<_>>().join(" ");
    for code in ErrorCode::ALL {
        let entry = format!("`{}` ({})", code.as_str(), code.status().as_u16());
        assert!(
            description.contains(&entry),
            "Error.code's description lacks {entry}"
        );
        assert!(readme.contains(&entry), "the README lacks {entry}");
    }
    // Each error response lists codes of its own status only, and every code is in one.
    let mut used = BTreeSet::new();
    for (place, status, codes) in error_responses(&doc) {
        for code in codes {
            let known = ErrorCode::ALL.iter().find(|c| c.as_str() == code);
            let known = known.unwrap_or_else(|| panic!("{place}: unknown code {code}"));
            assert_eq!(known.status().as_u16(), status, "{place}: {code}");
            used.insert(code);
        }
    }
    let unused: Vec<&&str> = all.iter().filter(|c| !used.contains(**c)).collect();
    assert!(unused.is_empty(), "codes no response lists: {unused:?}");
}

#[test]
fn requests_refused_before_routing_validate_against_the_document() {
    let doc = document();
    let root = ls_root();
    let server = start(&root, &[]);
    let big = format!(
        "GET / HTTP/1.1\r\nhost: x\r\nx-big: {}\r\n\r\n",
        "a".repeat(70_000)
    );
    let cases = [
        (
            "MalformedRequest",
            "GET / HTTP/1.1\r\nno colon\r\n\r\n".to_owned(),
        ),
        ("HeadTooLarge", big),
    ];
    for (name, raw) in cases {
        let response = exchange(server.addr, raw.as_bytes());
        let documented = resolve(&doc, &doc["components"]["responses"][name]);
        assert_matches(&doc, documented, name, &response);
    }
}

/// The query parameters the document gives `path`'s operations.
fn documented_query_params(doc: &Value, path: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for (key, operation) in doc["paths"][path].as_object().unwrap() {
        if !OPERATIONS.contains(&key.as_str()) {
            continue;
        }
        for parameter in operation["parameters"].as_array().into_iter().flatten() {
            let parameter = resolve(doc, parameter);
            if parameter["in"] == "query" {
                names.insert(parameter["name"].as_str().unwrap().to_owned());
            }
        }
    }
    names
}

#[test]
fn every_endpoint_documents_the_query_parameters_its_handlers_read_and_every_code_they_answer() {
    let doc = document();
    for endpoint in ENDPOINTS {
        let path = endpoint.path;
        let read: BTreeSet<String> = endpoint.params.iter().map(|p| p.to_string()).collect();
        assert_eq!(
            documented_query_params(&doc, path),
            read,
            "{path}: documented query parameters (left), read by the handlers (right)"
        );
        // Every code the endpoint can answer is listed under a response of its status.
        let mut listed: BTreeSet<(u16, String)> = BTreeSet::new();
        for (key, operation) in doc["paths"][path].as_object().unwrap() {
            if !OPERATIONS.contains(&key.as_str()) {
                continue;
            }
            for (status, response) in operation["responses"].as_object().unwrap() {
                let response = resolve(&doc, response);
                let codes = response
                    .pointer("/content/application~1json/schema/allOf/1/properties/code/enum");
                for code in codes.and_then(Value::as_array).into_iter().flatten() {
                    listed.insert((status.parse().unwrap(), code.as_str().unwrap().to_owned()));
                }
            }
        }
        for code in endpoint.errors {
            let entry = (code.status().as_u16(), code.as_str().to_owned());
            assert!(
                listed.contains(&entry),
                "{path}: {entry:?} is not documented"
            );
        }
    }
}

/// No handler reads a query parameter but through a constant that [`ENDPOINTS`] lists: every
/// `single_param*(&uri, NAME)` in src/routes names a constant, not a literal, and that
/// constant's value is among the parameters of some endpoint.
#[test]
fn handlers_read_query_parameters_only_through_the_listed_constants() {
    let listed: BTreeSet<&str> = ENDPOINTS
        .iter()
        .flat_map(|e| e.params.iter().copied())
        .collect();
    let constants = [
        ("NUMBER", forkpool::routes::isprime::NUMBER),
        ("TIMEOUT", forkpool::routes::isprime::TIMEOUT),
        ("DIRECTORY", forkpool::routes::ls::DIRECTORY),
    ];
    let mut files = vec![];
    let mut dirs = vec![std::path::PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/src/routes"
    ))];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            match path.is_dir() {
                true => dirs.push(path),
                false => files.push(path),
            }
        }
    }
    let mut calls = 0;
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        // Unit tests call the readers with made-up names.
        let text = text.split("#[cfg(test)]").next().unwrap();
        for (at, _) in text.match_indices("(&uri, ") {
            let before = &text[..at];
            if !(before.ends_with("single_param") || before.ends_with("single_param_bytes")) {
                continue;
            }
            let argument = text[at + 7..].split(')').next().unwrap().trim();
            let known = constants.iter().find(|(name, _)| argument.ends_with(name));
            let (_, value) = known.unwrap_or_else(|| {
                panic!(
                    "{}: a query parameter read as {argument}, not a listed constant",
                    file.display()
                )
            });
            assert!(listed.contains(value), "{value} is in no endpoint's params");
            calls += 1;
        }
    }
    assert!(calls >= 2, "the scan found the handlers' reads ({calls})");
}

// ---------------------------------------------------------------------------------------------
// Property tests: requests generated from the document's own parameter schemas, answered by a
// router in this process, each answer checked against the document.

/// `--max-digits` of the in-process server: small, so that the pattern's bound is reachable.
const PROPERTY_MAX_DIGITS: u32 = 30;

/// An in-process server (its listing root kept alive with it) and the document it serves,
/// fetched from it: the schemas come from what a client would read.
struct InProcess {
    app: App,
    doc: Value,
    _root: tempfile::TempDir,
}

fn in_process() -> &'static InProcess {
    static SERVER: std::sync::OnceLock<InProcess> = std::sync::OnceLock::new();
    SERVER.get_or_init(|| {
        let root = ls_root();
        let digits = PROPERTY_MAX_DIGITS.to_string();
        let root_path = root.path().to_str().unwrap();
        let flags = [
            "--workers",
            "1",
            "--max-digits",
            &digits,
            "--ls-root",
            root_path,
        ];
        let app = App::start(&flags);
        let doc = serde_json::from_slice(&app.get("/openapi.json").body).unwrap();
        InProcess {
            app,
            doc,
            _root: root,
        }
    })
}

/// The schema of query parameter `name` of `GET path` in the served document.
fn query_schema<'a>(doc: &'a Value, path: &str, name: &str) -> &'a Value {
    let parameters = doc["paths"][path]["get"]["parameters"].as_array().unwrap();
    let parameter = parameters
        .iter()
        .map(|p| resolve(doc, p))
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("{path}: no parameter {name}"));
    &parameter["schema"]
}

/// Strings matching the `pattern` of `schema` (anchors dropped: the generator does not take
/// them, and the patterns are whole-value ones), and strings near them or anything at all.
fn from_pattern(schema: &Value) -> impl proptest::strategy::Strategy<Value = String> {
    use proptest::prelude::*;
    let pattern = schema["pattern"].as_str().expect("a pattern");
    let inner = pattern
        .strip_prefix('^')
        .unwrap()
        .strip_suffix('$')
        .unwrap();
    let valid = proptest::string::string_regex(inner).unwrap();
    let near = "[ \\t\u{a0}\u{85}\u{feff}\u{1c}]{0,2}[+-]{0,2}0{0,3}[0-9/]{0,34}([.eExX ][0-9a-f+-]{0,3})?[ \u{665}\u{200b}]{0,2}";
    prop_oneof![
        4 => valid,
        2 => proptest::string::string_regex(near).unwrap(),
        1 => ".{0,40}",
    ]
}

/// Percent-encodes every byte that is not unreserved.
fn encode(value: &str) -> String {
    value
        .bytes()
        .map(
            |b| match b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                true => (b as char).to_string(),
                false => format!("%{b:02X}"),
            },
        )
        .collect()
}

/// Checks one answer: a request valid by the document is not refused as invalid (a 4xx other
/// than the `limits` codes the document names), an invalid one gets a 4xx, and the answer is
/// what the document promises for its status (body, content type, headers).
fn check_property(
    doc: &Value,
    method: &str,
    request: &str,
    valid: bool,
    limits: &[&str],
    answer: &Response,
) {
    let status = answer.status;
    let body = String::from_utf8_lossy(&answer.body);
    if valid {
        let code = match (400..500).contains(&status) {
            true => answer.json()["code"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            false => String::new(),
        };
        assert!(
            !(400..500).contains(&status) || limits.contains(&code.as_str()),
            "{method} {request}: valid by the document, refused: {status} {body}"
        );
        assert!(status < 500, "{method} {request}: {status} {body}");
    } else {
        assert!(
            (400..500).contains(&status),
            "{method} {request}: invalid by the document, answered {status} {body}"
        );
    }
    let path = request.split('?').next().unwrap();
    assert_documented(doc, method, path, answer);
}

proptest::proptest! {
    #![proptest_config(proptest::test_runner::Config { cases: 200, ..Default::default() })]

    #[test]
    fn numbers_from_the_documented_schema_get_what_the_document_promises(
        number in from_pattern(query_schema(&in_process().doc, "/isprime", "number")),
    ) {
        let server = in_process();
        let doc = &server.doc;
        let schema = query_schema(doc, "/isprime", "number");
        let valid = validate(doc, schema, &Value::from(number.clone())).is_ok();
        let request = format!("/isprime?number={}", encode(&number));
        let answer = server.app.get(&request);
        check_property(doc, "GET", &request, valid, &[], &answer);
        // The same value in a JSON body, against the body's schema.
        let schema = &doc["components"]["schemas"]["IsPrimeRequest"];
        let body = json!({ "number": number });
        let valid = validate(doc, schema, &body).is_ok();
        let answer = server.app.post_json("/isprime", &body.to_string());
        check_property(doc, "POST", "/isprime", valid, &[], &answer);
    }

    #[test]
    fn bare_json_numbers_get_what_the_documented_schema_promises(
        digits in "0|[1-9][0-9]{0,33}",
        point in 0usize..4,
        exponent in -3i32..4,
        negative in proptest::bool::ANY,
        zeros in "0{0,2}",
    ) {
        // One value in many JSON spellings: digits with a decimal point moved in, then an
        // exponent that may or may not give back the shift, and trailing zeros.
        let server = in_process();
        let doc = &server.doc;
        let point = point.min(digits.len() - 1);
        let (whole, fraction) = digits.split_at(digits.len() - point);
        let mut literal = String::from(if negative { "-" } else { "" });
        literal.push_str(whole);
        if !fraction.is_empty() || !zeros.is_empty() {
            literal.push_str(&format!(".{fraction}{zeros}"));
        }
        if exponent != 0 {
            literal.push_str(&format!("e{exponent}"));
        }
        let body = format!("{{\"number\": {literal}}}");
        let instance: Value = serde_json::from_str(&body).unwrap();
        // serde_json reads a non-integer literal as an f64: decide validity by exact value.
        let shift = exponent as i64 - fraction.len() as i64;
        let significant = digits.trim_start_matches('0');
        let whole_value = significant.is_empty()
            || (shift >= 0)
            || significant.len() as i64 > -shift
                && significant[(significant.len() as i64 + shift) as usize..].bytes().all(|b| b == b'0');
        let zero = significant.is_empty();
        let valid = whole_value && (zero || !negative);
        if !literal.contains(['.', 'e']) {
            let schema = &doc["components"]["schemas"]["IsPrimeRequest"];
            proptest::prop_assert_eq!(validate(doc, schema, &instance).is_ok(), valid, "{}", body);
        }
        let answer = server.app.post_json("/isprime", &body);
        check_property(doc, "POST", "/isprime", valid, &["number_too_long"], &answer);
    }

    #[test]
    fn directories_from_the_documented_schema_get_what_the_document_promises(
        directory in from_pattern(query_schema(&in_process().doc, "/ls", "directory")),
    ) {
        let server = in_process();
        let doc = &server.doc;
        let schema = query_schema(doc, "/ls", "directory");
        let valid = validate(doc, schema, &Value::from(directory.clone())).is_ok();
        let request = format!("/ls?directory={}", encode(&directory));
        let answer = server.app.get(&request);
        // A name that does not exist is no invalid input; the byte limits the document names
        // are limits, for names of multi-byte characters that the character counts allow.
        let bytes_over = directory.len() > 4095 || directory.split('/').any(|c| c.len() > 255);
        let limits: &[&str] = match bytes_over {
            true => &["directory_not_found", "directory_too_long", "directory_unresolvable"],
            false => &["directory_not_found", "outside_root", "permission_denied"],
        };
        check_property(doc, "GET", &request, valid, limits, &answer);
    }
}

/// Found by schemathesis: a `directory` of exactly the documented `maxLength` (bytes, in
/// names of 255) was refused 400 `directory_unresolvable`, because the kernel's PATH_MAX
/// counts the terminating NUL.
#[test]
fn a_directory_of_the_documented_length_is_not_refused() {
    let server = in_process();
    let schema = query_schema(&server.doc, "/ls", "directory");
    let max = schema["maxLength"].as_u64().unwrap() as usize;
    let names = vec!["0".repeat(255); max / 256 + 1].join("/");
    for directory in [&names[..max], &names[..max - 1]] {
        assert!(validate(&server.doc, schema, &Value::from(directory)).is_ok());
        let request = format!("/ls?directory={directory}");
        let answer = server.app.get(&request);
        assert_eq!(
            answer.status,
            404,
            "{}",
            String::from_utf8_lossy(&answer.body)
        );
        assert_documented(&server.doc, "GET", "/ls", &answer);
    }
}
