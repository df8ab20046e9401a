//! The console with the admin token: the link up, an association watched to `bound` without a
//! reload, its timeline, the binding found, its live events followed and unbound, the audit
//! log, the directory, a counter reset and an owner block lifted from the page; the page's security (CSP, no token in any
//! URL, the token in sessionStorage only); and a phone-width screen.

use serde_json::json;

use crate::browser::{chromium_present, Browser, Site};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_follows_links_and_associations_live_and_resets_a_counter() {
    if !chromium_present() {
        return;
    }
    let mut site = Site::start().await;
    let b = Browser::start().await;
    let admin = site.gw.tokens.admin.clone();
    let tenant = site.gw.tokens.tenant.clone();

    // /console redirects to the page; the login form comes first.
    b.client.goto(&format!("{}/console", site.base)).await.expect("open the console");
    b.wait_css("#login:not([hidden]) #token").await;
    assert!(b.client.current_url().await.expect("url").as_str().ends_with("/console/"));
    b.screenshot("01-login").await;
    b.tab_to_token().await;
    b.log_in(&admin).await;
    // Keep every request's timing entry (the check of their URLs below), not the first 250.
    b.js("performance.setResourceTimingBufferSize(1000000); return null;").await;

    // PBX links: paris up, and its sparkline drawn from at least two polls (live).
    b.wait_css("article[data-pbx='paris'] .badge[data-state='up']").await;
    b.wait_css("article[data-pbx='paris'] svg.spark polyline").await;
    b.wait_css("article[data-pbx='paris'] dd[data-counter='frames_in']").await;
    b.screenshot("02-links").await;

    // Associations: one started through the API appears, and reaches `bound` on the page
    // without a reload (the marker set in this document survives).
    b.click("#nav a[data-page='associations']").await;
    b.wait_css("#assoc-summary[data-count]").await;
    b.js("window.cstagateNoReload = true; return null;").await;
    let (id, code) = site.ask("alice", "2005").await;
    b.wait_css(&format!("tr[data-id='{id}']")).await;
    let (call, last) = site.answer_proof_call(&code).await;
    assert!(last["say"].as_str().unwrap_or_default().contains("now linked"), "{last}");
    site.ivr.line.hangup(&call);
    b.wait_css(&format!("tr[data-id='{id}'] td[data-state='bound']")).await;
    assert_eq!(b.js("return window.cstagateNoReload === true;").await, json!(true), "the page was reloaded");
    b.screenshot("03-associations").await;

    // Its detail: the history as a timeline, in words.
    b.click(&format!("tr[data-id='{id}'] a")).await;
    b.wait_css("#timeline li[data-step='bound']").await;
    b.wait_text("#timeline li[data-step='confirmed']", "Confirmed by the phone's owner").await;
    b.wait_text("#assoc-head", "Bound: the extension is linked to the account.").await;
    b.screenshot("04-association").await;

    // A failed attempt: a wrong code, then the IVR platform hangs up. Its reason in words.
    let (failed, code2) = site.ask("mallory", "2006").await;
    let wrong = if code2 == "000000" { "999999" } else { "000000" };
    let (call2, _) = site.answer_proof_call(wrong).await;
    site.ivr.line.hangup(&call2);
    let v = site.until_state(&failed, "failed").await;
    assert_eq!(v["reason"], "call_cleared", "{v}");
    b.js(&format!("location.hash = '#/associations/{failed}'; return null;")).await;
    b.wait_text("#assoc-reason[data-reason='call_cleared']", "The call ended before the code was entered correctly. The user may try again.").await;
    b.screenshot("05-association-failed").await;

    // Bindings: alice's found; its live events followed (server-sent events read with fetch,
    // the token in the header) while a call is made through the CTI API; then unbound.
    b.click("#nav a[data-page='bindings']").await;
    b.fill("#b-pbx", "paris").await;
    b.fill("#b-extension", "2005").await;
    b.click("#binding-one button[type='submit']").await;
    b.wait_css("#binding-table tr[data-extension='2005']").await;
    b.click("#binding-table tr[data-extension='2005'] button[data-action='watch']").await;
    b.wait_text("#event-state", "Following (live).").await;
    let (s, v) = site.http().json("POST", "/v1/extensions/paris/2005/calls", &tenant, Some(json!({ "account": "alice", "to": "2006" }))).await.expect("MakeCall");
    assert_eq!(s, 201, "{v}");
    b.wait_css("#event-list li").await;
    b.screenshot("06-bindings").await;
    let placed = v["call"].as_str().expect("the call's id").to_owned();
    let (s, v) = site.http().json("DELETE", &format!("/v1/extensions/paris/2005/calls/{placed}?account=alice"), &tenant, None).await.expect("ClearConnection");
    assert_eq!(s, 204, "{v}");
    b.click("#binding-table tr[data-extension='2005'] button[data-action='unbind']").await;
    b.click("#binding-table button[data-action='confirm-unbind']").await;
    b.wait_css("#binding-none").await;
    let (s, _) = site.http().json("GET", "/v1/bindings/paris/2005", &admin, None).await.expect("GET the binding");
    assert_eq!(s, 404, "unbound from the page");

    // The audit log, searched by extension.
    b.click("#nav a[data-page='audit']").await;
    b.fill("#a-extension", "2005").await;
    b.click("#audit-filters button[type='submit']").await;
    b.wait_text("#audit-table", "alice").await;
    b.wait_text("#audit-table", "Unbound").await;
    b.screenshot("07-audit").await;

    // The directory.
    b.click("#nav a[data-page='directory']").await;
    b.fill("#d-pbx", "paris").await;
    b.fill("#d-name", "alice").await;
    b.click("#directory-form button[type='submit']").await;
    b.wait_text("#directory-table tr[data-extension='2005']", "Alice Martin").await;
    b.screenshot("08-directory").await;

    // Counters: mallory's wrong code counted; reset from the page; the API says 0.
    let counters = "/v1/admin/counters?account=mallory&tenant=acme";
    let charged = |v: &serde_json::Value| v["counters"].as_array().map_or(0, |c| c.iter().map(|c| c["value"].as_u64().unwrap_or(0)).sum::<u64>());
    let (_, v) = site.http().json("GET", counters, &admin, None).await.expect("GET counters");
    assert!(charged(&v) > 0, "the wrong code is counted: {v}");
    b.click("#nav a[data-page='limits']").await;
    b.fill("#l-account", "mallory").await;
    b.fill("#l-tenant", "acme").await;
    b.click("#limits-form button[type='submit']").await;
    b.wait_css("#counters-table td[data-value='1']").await;
    b.screenshot("09-limits").await;
    b.click("#reset-counters").await;
    b.click("#limits-actions button[data-action='confirm']").await;
    b.wait_css("#no-counters").await;
    let (_, v) = site.http().json("GET", counters, &admin, None).await.expect("GET counters");
    assert_eq!(charged(&v), 0, "reset from the page: {v}");

    // An owner block: the person at 2006 presses 9 on eve's proof call; lifted from the page.
    let (s, v) = site.http().json("DELETE", &format!("/v1/associations/{failed}"), &tenant, None).await.expect("cancel");
    assert_eq!(s, 200, "{v}");
    let (eve, _) = site.ask("eve", "2006").await;
    let (call3, _) = site.play_proof_call(&["9"]).await;
    site.ivr.line.hangup(&call3);
    assert_eq!(site.until_state(&eve, "failed").await["reason"], "refused_by_phone_owner");
    let blocks = "/v1/admin/blocks?pbx=paris&extension=2006";
    let (_, v) = site.http().json("GET", blocks, &admin, None).await.expect("GET blocks");
    assert_eq!(v["blocks"].as_array().map(Vec::len), Some(1), "{v}");
    for (field, value) in [("#l-pbx", "paris"), ("#l-extension", "2006"), ("#l-account", ""), ("#l-tenant", "")] {
        b.fill(field, value).await;
    }
    b.click("#limits-form button[type='submit']").await;
    b.wait_text("#blocks-table", "eve").await;
    b.click("#lift-blocks").await;
    b.click("#limits-actions button[data-action='confirm']").await;
    b.wait_css("#no-blocks").await;
    let (_, v) = site.http().json("GET", blocks, &admin, None).await.expect("GET blocks");
    assert_eq!(v["blocks"].as_array().map(Vec::len), Some(0), "lifted from the page: {v}");

    // The page's security: no CSP violation; no request URL carries a token; the token is in
    // sessionStorage only (no cookie, no localStorage).
    assert_eq!(b.js("return document.body.dataset.cspViolations || null;").await, json!(null));
    let urls = b.js("return [location.href].concat(performance.getEntries().map(e => e.name));").await;
    let urls: Vec<String> = urls.as_array().expect("a list").iter().filter_map(|u| u.as_str().map(str::to_owned)).collect();
    assert!(urls.iter().any(|u| u.contains("/v1/associations")), "the API's requests are seen: {urls:?}");
    assert!(urls.iter().any(|u| u.contains("/events?account=")), "the event stream's request is seen: {urls:?}");
    for u in &urls {
        assert!(!u.contains(&admin) && !u.contains(&tenant) && !u.to_ascii_lowercase().contains("token"), "a token in a URL: {}", u.replace(&admin, "<admin token>").replace(&tenant, "<tenant token>"));
    }
    assert_eq!(b.js("return sessionStorage.getItem('cstagate.token');").await, json!(admin));
    assert_eq!(b.js("return [localStorage.length, document.cookie];").await, json!([0, ""]));

    // A phone's width: the navigation is still there and works.
    b.client.set_window_size(390, 844).await.expect("resize");
    b.click("#nav a[data-page='associations']").await;
    b.wait_css(&format!("tr[data-id='{id}']")).await;
    let bindings = b.wait_css("#nav a[data-page='bindings']").await;
    assert!(bindings.is_displayed().await.expect("displayed?"), "the navigation is hidden at phone width");
    let (x, _, w, _) = bindings.rectangle().await.expect("its place");
    assert!(x >= 0.0 && x + w <= 390.0, "the navigation overflows the screen: x {x} width {w}");
    b.screenshot("10-phone").await;
    bindings.click().await.expect("click Bindings");
    b.wait_text("#page-title", "Bindings").await;

    // Logging out forgets the token.
    b.click("#logout").await;
    b.wait_css("#login:not([hidden])").await;
    assert_eq!(b.js("return sessionStorage.length;").await, json!(0));
}

/// The console's files: the policy and the other security headers on each, their types, the
/// redirect, and an unknown file refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_is_served_with_a_strict_policy() {
    let site = Site::start().await;
    let (status, h) = site.raw_get("/console").await;
    assert!(status.contains(" 308 "), "{status}");
    assert!(h.iter().any(|(k, v)| k == "location" && v == "/console/"), "{h:?}");
    // The policy the README shows is the one served.
    let readme = std::fs::read_to_string(crate::common::root().join("README.md")).expect("the README");
    let documented = readme.lines().find_map(|l| l.strip_prefix("Content-Security-Policy: ")).expect("the README shows the console's policy");
    assert_eq!(documented, cstagate::api::console::CSP);
    for (path, ty) in [("/console/", "text/html"), ("/console/app.js", "text/javascript"), ("/console/api.js", "text/javascript"), ("/console/words.js", "text/javascript"), ("/console/console.css", "text/css")] {
        let (status, h) = site.raw_get(path).await;
        assert!(status.contains(" 200 "), "{path}: {status}");
        let get = |name: &str| h.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str()).unwrap_or_default();
        assert!(get("content-type").starts_with(ty), "{path}: {h:?}");
        assert_eq!(get("content-security-policy"), "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'", "{path}");
        assert_eq!(get("content-security-policy"), documented, "{path}");
        assert_eq!(get("x-content-type-options"), "nosniff", "{path}");
        assert_eq!(get("referrer-policy"), "no-referrer", "{path}");
        assert_eq!(get("cache-control"), "no-cache", "{path}");
    }
    let (status, _) = site.raw_get("/console/secrets.toml").await;
    assert!(status.contains(" 404 "), "{status}");
    // Nothing inline for the policy to block: no inline script or style, no handler attribute.
    let (s, page) = site.http().raw("GET", "/console/", &[], None).await.expect("the page");
    assert_eq!(s, 200);
    let page = String::from_utf8_lossy(&page);
    assert!(!page.contains("<script>") && !page.contains("<style") && !page.contains("style=") && !page.contains(" onclick="), "{page}");
}
