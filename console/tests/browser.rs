//! The console in a real browser: headless Chromium (Debian's `chromium` and
//! `chromium-driver`) driven over WebDriver, against the same world as tests/console.rs (the
//! real API server, zitadel's example OP, the console binary). What curl cannot show: the
//! OP's login form, the generated form as a person fills it, the Ready condition arriving
//! over server-sent events without a reload, the messages where a person reads them.
//!
//! It takes the screenshots of docs/console.md: always into
//! `$CARGO_TARGET_TMPDIR/console-screenshots/`, and with `UPDATE_SCREENSHOTS=1` also into
//! docs/console/.

mod support;

use fantoccini::{Client, ClientBuilder, Locator};
use kube::api::{Patch, PatchParams};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::*;

/// How long a page may take to show what a step waits for.
const WAIT: Duration = Duration::from_secs(20);

/// chromedriver on a free port, in its own process group so that dropping it also ends the
/// Chromium processes it started.
struct Driver {
    proc: Proc,
    port: u16,
    log: PathBuf,
}

impl Driver {
    fn start(dir: &Path) -> Self {
        use std::os::unix::process::CommandExt;
        let port = free_port();
        let log = dir.join("chromedriver.log");
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(Stdio::inherit())
            .process_group(0)
            .spawn()
            .expect("chromedriver (Debian chromium-driver; .ci/install-deps.sh installs it)");
        let proc = Proc(child);
        wait_listening(port, "chromedriver", &log);
        Driver { proc, port, log }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // The whole group: chromedriver and every Chromium it started.
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.proc.0.id())])
            .status();
    }
}

/// base64 of the SHA-256 of a certificate's SubjectPublicKeyInfo: what Chromium's
/// `--ignore-certificate-errors-spki-list` pins. Only the OP's key is trusted that way; every
/// other certificate error still stops the browser.
fn spki_pin(cert: &Path) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(
            "openssl x509 -in \"$1\" -pubkey -noout | openssl pkey -pubin -outform der \
             | openssl dgst -sha256 -binary | base64",
        )
        .arg("sh")
        .arg(cert)
        .output()
        .expect("openssl runs");
    assert!(out.status.success(), "{out:?}");
    let pin = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert_eq!(pin.len(), 44, "a base64 SHA-256: {pin}");
    pin
}

/// One person's browser: a WebDriver session with its own profile (so its own cookies).
struct Browser<'w> {
    c: Client,
    w: &'w World,
    _profile: tempfile::TempDir,
}

impl<'w> Browser<'w> {
    async fn open(driver: &Driver, w: &'w World) -> Self {
        let profile = tempfile::tempdir().unwrap();
        let args = vec![
            "--headless=new".to_string(),
            // Tests run as root, where Chromium's sandbox cannot start.
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-dev-shm-usage".into(),
            "--no-first-run".into(),
            "--hide-scrollbars".into(),
            "--force-device-scale-factor=1".into(),
            "--lang=en-US".into(),
            "--window-size=1280,900".into(),
            format!("--user-data-dir={}", profile.path().display()),
            format!(
                "--ignore-certificate-errors-spki-list={}",
                spki_pin(&w.op_cert)
            ),
        ];
        let caps = json!({"browserName": "chrome", "goog:chromeOptions": {"args": args}});
        let Value::Object(caps) = caps else {
            unreachable!()
        };
        let c = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{}", driver.port))
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "a Chromium session: {e}\n{}",
                    std::fs::read_to_string(&driver.log).unwrap_or_default()
                )
            });
        Browser {
            c,
            w,
            _profile: profile,
        }
    }

    async fn goto(&self, path: &str) {
        self.c.goto(&self.w.url(path)).await.unwrap();
    }

    /// The value of a JavaScript expression on the current page.
    async fn js(&self, expr: &str) -> Value {
        self.c
            .execute(&format!("return ({expr});"), vec![])
            .await
            .unwrap_or_else(|e| panic!("{expr}: {e}"))
    }

    /// What helps when a step fails: the page and the console's log.
    async fn report(&self, what: &str) -> String {
        let url = self.c.current_url().await.map(|u| u.to_string());
        let source = self.c.source().await.unwrap_or_default();
        format!(
            "{what}\nat {url:?}\n--- page ---\n{source}\n--- console log ---\n{}",
            self.w.log()
        )
    }

    /// Polls `expr` until it is truthy (not false, null, 0 or ""), and returns it.
    async fn until(&self, what: &str, expr: &str) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            // A page being replaced by a navigation answers with an error: poll again.
            if let Ok(v) = self.c.execute(&format!("return ({expr});"), vec![]).await {
                let truthy = match &v {
                    Value::Null => false,
                    Value::Bool(b) => *b,
                    Value::String(s) => !s.is_empty(),
                    Value::Number(n) => n.as_f64() != Some(0.0),
                    _ => true,
                };
                if truthy {
                    return v;
                }
            }
            if Instant::now() > deadline {
                let report = self
                    .report(&format!("timed out waiting for {what}: {expr}"))
                    .await;
                panic!("{report}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The text of the first element `css` matches, once there is one.
    async fn text(&self, css: &str) -> String {
        let q = serde_json::to_string(css).unwrap();
        self.until(
            &format!("an element {css}"),
            &format!("document.querySelector({q}) && document.querySelector({q}).innerText"),
        )
        .await
        .as_str()
        .unwrap()
        .to_string()
    }

    /// Scrolls the first element `css` matches to the middle of the viewport (screenshots).
    async fn show(&self, css: &str) {
        let q = serde_json::to_string(css).unwrap();
        self.js(&format!(
            "document.querySelector({q}).scrollIntoView({{block: 'center'}}) || true"
        ))
        .await;
    }

    async fn exists(&self, css: &str) -> bool {
        let q = serde_json::to_string(css).unwrap();
        self.js(&format!("document.querySelector({q}) !== null"))
            .await
            .as_bool()
            .unwrap()
    }

    /// Types `value` into the form field named `name` (a select picks the option).
    async fn fill(&self, name: &str, value: &str) {
        let el = self
            .c
            .find(Locator::Css(&format!(r#"[name="{name}"]"#)))
            .await
            .unwrap_or_else(|e| panic!("field {name}: {e}"));
        if el.tag_name().await.unwrap() == "select" {
            el.select_by_label(value).await.unwrap();
        } else {
            el.clear().await.unwrap();
            el.send_keys(value).await.unwrap();
        }
    }

    async fn click(&self, css: &str) {
        self.c
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("{css}: {e}"))
            .click()
            .await
            .unwrap();
    }

    /// Waits for the page at `path` (path and query of the console).
    async fn at(&self, path: &str) {
        let want = serde_json::to_string(&self.w.url(path)).unwrap();
        self.until(
            &format!("the page {path}"),
            &format!("document.readyState === 'complete' && location.href === {want}"),
        )
        .await;
    }

    /// Logs in through the OP's own login form, from `path`, and waits to be back there.
    async fn login(&self, who: (&str, &str), email: &str, path: &str) {
        self.goto(path).await;
        self.until(
            "the OP's login form",
            "document.querySelector('input[name=password]') !== null",
        )
        .await;
        let op = format!("https://localhost:{}/", self.w.op_port);
        let here = self.c.current_url().await.unwrap().to_string();
        assert!(here.starts_with(&op), "at the OP: {here}");
        self.fill("username", who.0).await;
        self.fill("password", who.1).await;
        self.click("button[type=submit],input[type=submit]").await;
        self.at(path).await;
        let who = self.text(".who").await;
        assert_eq!(who, email, "the page names the person");
        let cookies = self.c.get_all_cookies().await.unwrap();
        let session = cookies
            .iter()
            .find(|c| c.name() == SESSION)
            .expect("Chromium kept the __Host- session cookie over http://localhost");
        assert_eq!(session.secure(), Some(true));
        assert_eq!(session.http_only(), Some(true));
    }

    /// A screenshot of the viewport, as docs/console/`name`.png.
    async fn screenshot(&self, name: &str) {
        let png = self.c.screenshot().await.unwrap();
        assert!(png.starts_with(b"\x89PNG"), "a PNG");
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("console-screenshots");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("{name}.png")), &png).unwrap();
        if std::env::var("UPDATE_SCREENSHOTS").as_deref() == Ok("1") {
            let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/console");
            std::fs::create_dir_all(&docs).unwrap();
            std::fs::write(docs.join(format!("{name}.png")), &png).unwrap();
        }
    }

    async fn close(self) {
        self.c.close().await.unwrap();
    }
}

fn policy(ns: &str, name: &str, labels: Value) -> Value {
    json!({"apiVersion": "rustronaut.io/v1alpha1", "kind": "Policy",
           "metadata": {"name": name, "namespace": ns, "labels": labels},
           "spec": {"action": "Allow", "targetRefs": [{"name": "app"}],
                    "rules": [{"name": "sre", "from": [{"user": {"groups": ["sre"]}}]}]}})
}

#[tokio::test(flavor = "multi_thread")]
async fn alice_and_bob_use_the_console_in_chromium() {
    let w = World::new().await;
    let ns = w.ns.clone();
    // What the pages show besides what Alice creates: the Resource her Policy targets, its
    // Tenant, and a Policy Argo CD applied.
    apply(
        &w.admin,
        json!({"apiVersion": "rustronaut.io/v1alpha1", "kind": "Tenant", "metadata": {"name": ns},
        "spec": {"namespaces": [ns], "domains": [format!("*.{ns}.test")]}}),
    )
    .await;
    apply(&w.admin, json!({"apiVersion": "rustronaut.io/v1alpha1", "kind": "Resource", "metadata": {"name": "app", "namespace": ns},
        "spec": {"protocol": "HTTP", "hostnames": [format!("app.{ns}.test")],
                 "gatewayRefs": [{"namespace": ns, "name": "edge", "listener": "https"}],
                 "rules": [{"name": "all", "upstreams": [{"service": {"name": "app", "port": 80}}]}]}})).await;
    apply(
        &w.admin,
        policy(
            &ns,
            "from-git",
            json!({"argocd.argoproj.io/instance": "acme"}),
        ),
    )
    .await;
    // Alice may also read them across namespaces, so the overview counts instead of saying
    // what she may not list.
    let viewer = format!("console-viewer-{ns}");
    apply(&w.admin, json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": viewer},
        "rules": [{"apiGroups": ["rustronaut.io"], "resources": ["gateways", "resources", "policies"], "verbs": ["get", "list", "watch"]}]})).await;
    apply(&w.admin, json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": viewer},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": viewer},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": ALICE_EMAIL}]})).await;
    let driver = Driver::start(&w.dir);
    let started = Instant::now();

    // 1. Alice logs in through the OP's login form and lands on the overview.
    let alice = Browser::open(&driver, &w).await;
    alice.login(ALICE, ALICE_EMAIL, "/").await;
    let card = alice
        .text(r#"section.card:has(a[href="/k/policies"])"#)
        .await;
    assert!(
        card.starts_with("Policies") && card.contains("1 total, 1 not Ready"),
        "{card}"
    );
    let overview = alice.text("main").await;
    assert!(!overview.contains("403"), "{overview}");
    alice.screenshot("overview").await;

    // 2. The generated form: a CIDR the CRD's CEL rule refuses comes back as a message next
    // to that field, with what she typed still there.
    alice.goto(&format!("/k/policies/new?namespace={ns}")).await;
    let cidrs = "spec.rules[0].from[0].sourceCIDRs.cidrs";
    alice
        .until(
            "the Policy form",
            "document.querySelector('form.schema-form')",
        )
        .await;
    alice.fill("metadata.name", "office").await;
    alice.fill("spec.action", "Allow").await;
    alice.fill("spec.targetRefs[0].name", "app").await;
    alice.fill("spec.rules[0].name", "office").await;
    alice.fill(cidrs, "not-a-cidr").await;
    alice.click("form.schema-form button[type=submit]").await;
    let err = alice
        .text(".field.has-error #f-spec-rules-0--from-0--sourceCIDRs-cidrs-err")
        .await;
    assert!(
        err.contains("cidrs must be CIDRs such as 10.0.0.0/8"),
        "{err}"
    );
    let beside = alice
        .js(&format!(
            "document.getElementById('f-spec-rules-0--from-0--sourceCIDRs-cidrs-err').closest('.field')\
             .querySelector('[name=\"{cidrs}\"]').getAttribute('aria-describedby')"
        ))
        .await;
    assert_eq!(
        beside,
        json!("f-spec-rules-0--from-0--sourceCIDRs-cidrs-err"),
        "the message belongs to the cidrs field"
    );
    assert_eq!(
        alice
            .js(&format!(
                "document.querySelectorAll('.field-error').length + ':' + \
                 document.querySelector('[name=\"{cidrs}\"]').value + ':' + \
                 document.querySelector('[name=\"metadata.name\"]').value"
            ))
            .await,
        json!("1:not-a-cidr:office"),
        "one error, and the form kept what she typed"
    );
    assert!(
        w.policies().get_opt("office").await.unwrap().is_none(),
        "a refused dry run writes nothing"
    );
    alice
        .show("#f-spec-rules-0--from-0--sourceCIDRs-cidrs-err")
        .await;
    alice.screenshot("form-cel-error").await;

    // She corrects the field and saves: the detail page shows the new Policy.
    alice.fill(cidrs, "10.0.0.0/8").await;
    alice.click("form.schema-form button[type=submit]").await;
    alice.at(&format!("/k/policies/{ns}/office")).await;
    let yaml = alice.text("main pre code").await;
    assert!(
        yaml.contains("10.0.0.0/8") && yaml.contains("name: office"),
        "{yaml}"
    );
    let stored = w.policies().get("office").await.unwrap();
    assert_eq!(
        stored.data["spec"]["rules"][0]["from"][0]["sourceCIDRs"]["cidrs"],
        json!(["10.0.0.0/8"])
    );

    // 3. Ready arrives live. No operator runs here: the test writes the status as the
    // operator would. The page must update through its event stream, not a reload: a
    // variable set on this page is still there afterwards.
    let cell = format!(r#"[data-key="{ns}/office"] .ready-cell"#);
    let before = alice.text(&cell).await;
    assert!(before.contains("Unknown"), "not Ready yet: {before}");
    alice.js("window.__sameDocument = 'yes'").await;
    w.policies()
        .patch_status(
            "office",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"status": {"conditions": [{"type": "Ready", "status": "True",
                "reason": "Programmed", "message": "in 1 gateway",
                "lastTransitionTime": "2026-01-01T00:00:00Z", "observedGeneration": 1}]}}),
            ),
        )
        .await
        .unwrap();
    let q = serde_json::to_string(&cell).unwrap();
    alice
        .until(
            "Ready True on the open page",
            &format!("document.querySelector({q}).innerText.includes('True Programmed')"),
        )
        .await;
    // The conditions table follows with the same event.
    let rows = serde_json::to_string(&format!(r#"[data-conditions="{ns}/office"]"#)).unwrap();
    alice
        .until(
            "the Ready condition in the conditions table",
            &format!("document.querySelector({rows}).innerText.includes('in 1 gateway')"),
        )
        .await;
    assert_eq!(
        alice.js("window.__sameDocument").await,
        json!("yes"),
        "the page was not reloaded"
    );
    alice.screenshot("detail").await;
    // The same page at phone width.
    alice.c.set_window_size(390, 844).await.unwrap();
    alice.screenshot("detail-phone").await;
    alice.c.set_window_size(1280, 900).await.unwrap();

    // The list shows both Policies with their Ready state.
    alice.goto(&format!("/k/policies?namespace={ns}")).await;
    let office = alice.text(&format!(r#"tr[data-key="{ns}/office"]"#)).await;
    assert!(office.contains("True"), "{office}");
    let git = alice
        .text(&format!(r#"tr[data-key="{ns}/from-git"]"#))
        .await;
    assert!(git.contains("Unknown"), "{git}");
    alice.screenshot("list").await;

    // 4. The Policy Argo CD applied is read-only: a banner, no edit or delete.
    alice.goto(&format!("/k/policies/{ns}/from-git")).await;
    let banner = alice.text(".notice.warn").await;
    assert!(
        banner.contains("Managed by GitOps: Argo CD (argocd.argoproj.io/instance=acme)"),
        "{banner}"
    );
    assert!(!alice.exists(r#"a[href$="/edit"]"#).await, "no edit link");
    assert!(
        !alice.exists(r#"a[href$="/delete"]"#).await,
        "no delete link"
    );
    assert!(!alice.exists("form.schema-form").await, "no form");
    alice.screenshot("gitops-read-only").await;
    alice.goto(&format!("/k/policies/{ns}/from-git/edit")).await;
    let refused = alice.text("main").await;
    assert!(
        refused.contains("Read-only here") && !alice.exists("form.schema-form").await,
        "{refused}"
    );

    // 5. The explain page answers for an identity and names the deciding rule.
    alice.goto("/explain").await;
    alice.fill("resource", &format!("{ns}/app")).await;
    alice.fill("path", "/").await;
    // Not from the office network, but in the sre group: Argo CD's Policy lets her in.
    alice.fill("source_ip", "192.0.2.1").await;
    alice
        .fill(
            "identity",
            "user: {idp: okta, email: alice@acme.example, groups: [sre]}",
        )
        .await;
    alice.click("form.explain button[type=submit]").await;
    let text = alice.text("pre.explanation").await;
    assert!(
        text.starts_with(&format!(
            "decision: Allow (AllowedBy) by {ns}/from-git rule sre\n"
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!("{ns}/office rule office: ")) && !text.contains("office: matched"),
        "the office rule was considered and did not match: {text}"
    );
    eprintln!("explain:\n{text}");
    alice.show("pre.explanation").await;
    alice.screenshot("explain").await;
    alice.close().await;

    // 6. Bob may read the Policy but the API server refuses his edit; the page says so.
    let bob = Browser::open(&driver, &w).await;
    bob.login(BOB, BOB_EMAIL, &format!("/k/policies/{ns}/office"))
        .await;
    bob.click(r#"a[href$="/office/edit"]"#).await;
    bob.at(&format!("/k/policies/{ns}/office/edit")).await;
    bob.fill("spec.action", "Deny").await;
    bob.click("form.schema-form button[type=submit]").await;
    let refusal = bob.text(".notice.error").await;
    assert!(
        refusal.contains("Kubernetes refused this for your account (403 Forbidden)")
            && refusal.contains(BOB_EMAIL),
        "{refusal}"
    );
    assert_eq!(
        w.policies().get("office").await.unwrap().data["spec"]["action"],
        "Allow",
        "Bob changed nothing"
    );
    bob.screenshot("forbidden").await;
    bob.close().await;
    eprintln!("in Chromium: {:?}", started.elapsed());
}
