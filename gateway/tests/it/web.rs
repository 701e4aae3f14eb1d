//! What a web page needs from the gateway: CORS on the REST API, answered from the same
//! allow-list as the WebSocket `Origin` check, against real Redis and gateway processes.

use serde_json::json;
use testkit::*;

const PAGE: &str = "https://display.example";

fn preflight<'a>(origin: &'a str, method: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("Origin", origin),
        ("Access-Control-Request-Method", method),
        (
            "Access-Control-Request-Headers",
            "authorization, content-type",
        ),
    ]
}

#[tokio::test]
async fn the_rest_api_answers_preflights_for_the_allowed_origins_only() {
    let redis = Redis::start();
    let g = Gateway::start(
        &redis.url(),
        &[(
            "ROOMCAST_ALLOWED_ORIGINS",
            "https://display.example,https://remote.example",
        )],
    );
    g.wait_ready().await;

    // A page on an allowed origin: the preflight of `POST /sessions/join` is answered (it
    // was a 405 before), with the methods and headers the API takes.
    let r = call_with(
        g.addr,
        "OPTIONS",
        "/api/v1/sessions/join",
        &preflight(PAGE, "POST"),
        None,
    )
    .await;
    assert!(r.status == 200 || r.status == 204, "{r:?}");
    assert_eq!(r.header("access-control-allow-origin"), Some(PAGE), "{r:?}");
    let methods = r.header("access-control-allow-methods").unwrap_or("");
    assert!(
        methods.contains("POST") && methods.contains("DELETE"),
        "{r:?}"
    );
    let headers = r
        .header("access-control-allow-headers")
        .unwrap_or("")
        .to_ascii_lowercase();
    assert!(
        headers.contains("authorization") && headers.contains("content-type"),
        "{r:?}"
    );
    assert_eq!(r.header("access-control-max-age"), Some("600"));
    assert!(
        r.header("access-control-allow-credentials").is_none(),
        "tokens travel in headers, never cookies"
    );

    // The request itself carries the CORS headers, and the ones a client reads are exposed.
    let r = call_with(
        g.addr,
        "POST",
        "/api/v1/sessions",
        &[("Origin", "https://REMOTE.example")],
        Some(&json!({})),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://REMOTE.example"),
        "origins compare like the WebSocket check: without regard to case"
    );
    let exposed = r
        .header("access-control-expose-headers")
        .unwrap_or("")
        .to_ascii_lowercase();
    for h in ["x-request-id", "retry-after", "ratelimit"] {
        assert!(exposed.contains(h), "{h} not exposed: {r:?}");
    }
    // Errors are problems with CORS headers too, or the page could not read them (here:
    // reading a session without a credential).
    let r = call_with(
        g.addr,
        "GET",
        "/api/v1/sessions/nope-not-there",
        &[("Origin", PAGE)],
        None,
    )
    .await;
    r.assert_problem(401, "unauthorized");
    assert_eq!(r.header("access-control-allow-origin"), Some(PAGE));

    // Another origin learns nothing: no allow header on the preflight or the request, so
    // the browser refuses to hand the answer to the page.
    let r = call_with(
        g.addr,
        "OPTIONS",
        "/api/v1/sessions/join",
        &preflight("https://evil.example", "POST"),
        None,
    )
    .await;
    assert!(r.header("access-control-allow-origin").is_none(), "{r:?}");
    let r = call_with(
        g.addr,
        "POST",
        "/api/v1/sessions",
        &[("Origin", "https://evil.example")],
        Some(&json!({})),
    )
    .await;
    assert!(r.header("access-control-allow-origin").is_none(), "{r:?}");
}

#[tokio::test]
async fn without_an_allow_list_every_origin_may_call_and_preflights_cost_no_quota() {
    let redis = Redis::start();
    // One request a window for the address: a preflight that counted would exhaust it.
    let g = Gateway::start(&redis.url(), &[("ROOMCAST_RATE_API_STRICT", "1/60s")]);
    g.wait_ready().await;
    for _ in 0..3 {
        let r = call_with(
            g.addr,
            "OPTIONS",
            "/api/v1/sessions",
            &preflight("http://192.168.1.20:8080", "POST"),
            None,
        )
        .await;
        assert!(r.status == 200 || r.status == 204, "{r:?}");
        assert_eq!(r.header("access-control-allow-origin"), Some("*"));
    }
    let r = call_with(
        g.addr,
        "POST",
        "/api/v1/sessions",
        &[("Origin", "http://192.168.1.20:8080")],
        Some(&json!({})),
    )
    .await;
    assert_eq!(
        r.status, 201,
        "the preflights took none of the window: {}",
        r.body
    );
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));
    // The health endpoints are for probes, not pages.
    let r = call_with(g.addr, "GET", "/health/ready", &[("Origin", PAGE)], None).await;
    assert_eq!(r.status, 200);
    assert!(r.header("access-control-allow-origin").is_none());
}

#[tokio::test]
async fn the_demo_is_served_only_when_turned_on() {
    let redis = Redis::start();
    let off = Gateway::start(&redis.url(), &[]);
    let on = Gateway::start(&redis.url(), &[("ROOMCAST_DEMO", "true")]);
    off.wait_ready().await;
    on.wait_ready().await;

    call(off.addr, "GET", "/demo/", None, None)
        .await
        .assert_problem(404, "not_found");
    call(off.addr, "GET", "/", None, None)
        .await
        .assert_problem(404, "not_found");

    // With the demo on, the root page links the demo, the API document and health; the
    // pages have an icon (no 404 in the browser's console).
    let r = call(on.addr, "GET", "/", None, None).await;
    assert_eq!(r.status, 200, "{r:?}");
    for link in ["/demo/", "/api/v1/openapi.json", "/health", "/metrics"] {
        assert!(
            r.body.contains(&format!("href=\"{link}\"")),
            "{link}: {}",
            r.body
        );
    }
    let r = call(on.addr, "GET", "/favicon.ico", None, None).await;
    assert_eq!(r.header("location"), Some("/demo/favicon.svg"), "{r:?}");
    let r = call(on.addr, "GET", "/demo/favicon.svg", None, None).await;
    assert_eq!(r.header("content-type"), Some("image/svg+xml"));
    assert!(r.body.starts_with("<svg"), "{}", r.body);

    let r = call(on.addr, "GET", "/demo", None, None).await;
    assert_eq!(r.status, 308, "{r:?}");
    assert_eq!(r.header("location"), Some("/demo/"));
    let r = call(on.addr, "GET", "/demo/", None, None).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
    assert!(r.body.contains("Roomcast demo: display"), "{}", r.body);
    let csp = r.header("content-security-policy").unwrap_or("");
    assert!(csp.contains("script-src 'self'"), "{csp}");
    let r = call(on.addr, "GET", "/demo/remote", None, None).await;
    assert!(r.body.contains("Roomcast demo: controller"), "{}", r.body);
    // The pages load the SDK's modules from the binary.
    for module in [
        "display.js",
        "remote.js",
        "sdk/index.js",
        "sdk/client.js",
        "sdk/session.js",
    ] {
        let r = call(on.addr, "GET", &format!("/demo/{module}"), None, None).await;
        assert_eq!(r.status, 200, "{module}");
        assert_eq!(
            r.header("content-type"),
            Some("text/javascript; charset=utf-8")
        );
    }
    call(on.addr, "GET", "/demo/../Cargo.toml", None, None)
        .await
        .assert_problem(404, "not_found");
    call(on.addr, "GET", "/demo/sdk/missing.js", None, None)
        .await
        .assert_problem(404, "not_found");

    let r = call(
        on.addr,
        "GET",
        "/demo/qr.svg?text=http%3A%2F%2F192.168.1.20%3A8080%2Fdemo%2Fremote%3Fcode%3DABC234",
        None,
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("content-type"), Some("image/svg+xml"));
    assert!(r.body.contains("<svg"), "{}", r.body);
    call(on.addr, "GET", "/demo/qr.svg", None, None)
        .await
        .assert_problem(400, "bad_request");
    let long = format!("/demo/qr.svg?text={}", "a".repeat(513));
    call(on.addr, "GET", &long, None, None)
        .await
        .assert_problem(400, "bad_request");
}
