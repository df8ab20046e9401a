//! The console with a tenant's token, and with a wrong one: a clear error for the wrong token,
//! the tenant's own association seen, the admin-only pages hidden and their 403 explained, and
//! another tenant seeing nothing of it.

use serde_json::json;

use crate::browser::{chromium_present, Browser, Site};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_sees_its_own_and_another_tenant_sees_nothing_of_it() {
    if !chromium_present() {
        return;
    }
    let mut site = Site::start().await;
    let id = site.bind("alice", "2005").await;
    let b = Browser::start().await;
    b.client.goto(&format!("{}/console/", site.base)).await.expect("open the console");

    // A wrong token: the API's 401 message, and nothing kept.
    b.log_in("not-a-token").await;
    b.wait_text("#error", "Login refused: the gateway refused the token: missing or wrong bearer token (HTTP 401).").await;
    assert_eq!(b.js("return sessionStorage.length;").await, json!(0));
    assert!(b.wait_css("#nav").await.attr("hidden").await.expect("attr").is_some(), "the navigation shows before a login");
    b.screenshot("11-wrong-token").await;

    // acme: its association (the positive control for globex below); the admin-only pages
    // are not offered, and opening one says why in the API's words.
    b.log_in_again_by_keyboard(&site.gw.tokens.tenant).await;
    b.wait_css(&format!("tr[data-id='{id}'] td[data-state='bound']")).await;
    for page in ["links", "limits"] {
        let link = b.wait_css(&format!("#nav a[data-page='{page}']")).await;
        assert!(!link.is_displayed().await.expect("displayed?"), "{page} is offered to a tenant");
    }
    b.client.goto(&format!("{}/console/#/links", site.base)).await.expect("open links");
    b.wait_text("#error", "PBX links: not allowed with this token; the gateway answered: admin token required (HTTP 403).").await;
    assert!(b.client.find(fantoccini::Locator::Css("article[data-pbx]")).await.is_err(), "a tenant sees a PBX link");
    b.screenshot("12-tenant-403").await;
    b.click("#logout").await;
    b.wait_css("#login:not([hidden])").await;
    assert_eq!(b.js("return sessionStorage.length;").await, json!(0));

    // globex: no association, no binding, no audit record of acme's.
    b.log_in(&site.gw.tokens.other_tenant).await;
    b.wait_css("#assoc-summary[data-count='0']").await;
    assert!(b.client.find(fantoccini::Locator::Css(&format!("tr[data-id='{id}']"))).await.is_err(), "globex sees acme's association");
    b.click("#nav a[data-page='bindings']").await;
    b.fill("#b-pbx", "paris").await;
    b.fill("#b-extension", "2005").await;
    b.click("#binding-one button[type='submit']").await;
    b.wait_css("#binding-none").await;
    b.click("#nav a[data-page='audit']").await;
    b.wait_css("#audit-summary[data-count='0']").await;
    b.screenshot("13-other-tenant").await;
    // The API agrees: acme's binding is there (for acme).
    let (s, _) = site.http().json("GET", "/v1/bindings/paris/2005", &site.gw.tokens.tenant, None).await.expect("GET the binding");
    assert_eq!(s, 200);
}
