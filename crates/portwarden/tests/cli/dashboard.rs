//! The dashboard in a real browser: headless Chromium driven over WebDriver
//! (`chromedriver`, spoken here as plain HTTP on 127.0.0.1), against a daemon on
//! 127.0.0.1:0. Logs in with a read token, sees the ports table, sees a listener appear
//! through the event stream, and leaves a screenshot in the test's output directory.

use super::serve::{Daemon, http};
use super::*;
use std::net::{SocketAddr, TcpListener};
use std::time::{Duration, Instant};

/// A chromedriver this test started, with one browser session; both ended on drop.
struct Browser {
    child: std::process::Child,
    addr: SocketAddr,
    session: String,
    _profile: portwarden_testkit::Dir,
}

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Browser {
    fn start() -> Browser {
        let port = free_port();
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver (Debian's chromium-driver)");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let until = Instant::now() + Duration::from_secs(30);
        loop {
            if std::net::TcpStream::connect(addr).is_ok()
                && http(addr, "GET", "/status", None, None)
                    .1
                    .contains("\"ready\":true")
            {
                break;
            }
            assert!(Instant::now() < until, "chromedriver never became ready");
            // Real time: chromedriver starting.
            std::thread::sleep(Duration::from_millis(100));
        }
        let profile = tempdir("chromium");
        let caps = serde_json::json!({
            "capabilities": {"alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": {
                    "binary": "/usr/bin/chromium",
                    "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                             "--disable-dev-shm-usage", "--no-first-run",
                             "--window-size=1400,1000",
                             format!("--user-data-dir={}", profile.display())]
                }
            }}
        });
        let (st, body) = http(addr, "POST", "/session", None, Some(&caps.to_string()));
        assert_eq!(st, 200, "new session: {body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        let session = v["value"]["sessionId"].as_str().unwrap().to_string();
        Browser {
            child,
            addr,
            session,
            _profile: profile,
        }
    }

    fn call(&self, method: &str, path: &str, body: Value) -> Value {
        let path = format!("/session/{}{path}", self.session);
        let body = (method == "POST").then(|| body.to_string());
        let (st, text) = http(self.addr, method, &path, None, body.as_deref());
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        assert_eq!(st, 200, "{method} {path}: {text}");
        v["value"].clone()
    }

    fn goto(&self, url: &str) {
        self.call("POST", "/url", serde_json::json!({ "url": url }));
    }

    fn find(&self, css: &str) -> String {
        let v = self.call(
            "POST",
            "/element",
            serde_json::json!({"using": "css selector", "value": css}),
        );
        v[ELEMENT].as_str().unwrap().to_string()
    }

    fn script(&self, js: &str) -> Value {
        self.call(
            "POST",
            "/execute/sync",
            serde_json::json!({"script": js, "args": []}),
        )
    }

    /// Polls `js` (an expression) until it is true; bounded.
    fn wait_for(&self, js: &str, what: &str, secs: u64) {
        let until = Instant::now() + Duration::from_secs(secs);
        loop {
            if self.script(&format!("return Boolean({js});")) == Value::Bool(true) {
                return;
            }
            let page = self.script("return document.body.innerText;");
            assert!(
                Instant::now() < until,
                "{what}: not seen in {secs} s; the page: {page}"
            );
            // Real time: the page updates from the daemon's event stream.
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn screenshot(&self, path: &Path) {
        use base64::Engine as _;
        let v = self.call("GET", "/screenshot", Value::Null);
        let png = base64::engine::general_purpose::STANDARD
            .decode(v.as_str().unwrap())
            .unwrap();
        assert!(png.starts_with(b"\x89PNG"), "a PNG");
        std::fs::write(path, png).unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = http(
            self.addr,
            "DELETE",
            &format!("/session/{}", self.session),
            None,
            None,
        );
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn the_dashboard_logs_in_shows_the_ports_and_follows_a_new_listener_live() {
    let up = TcpListener::bind("127.0.0.1:0").unwrap();
    let later = free_port();
    let up_port = up.local_addr().unwrap().port();
    let policy = format!(
        r#"
version = 1
[[service]]
name = "rsync-mirror"
port = {up_port}
zone = "localhost"
max_conn = 50
[[service]]
name = "http-mirror"
port = {later}
zone = "localhost"
"#
    );
    let d = Daemon::start_with("dashboard", &policy, &[]);
    // The page is served without a token; everything it shows needs one.
    let (st, page) = http(d.addr, "GET", "/", None, None);
    assert_eq!(st, 200);
    assert!(page.contains("<title>portwarden</title>"));
    let (st, _) = http(d.addr, "GET", "/api/v1/overview", None, None);
    assert_eq!(st, 401);

    // A pending change request, which the page lists with its diff.
    let body = serde_json::json!({
        "policy": format!("{policy}\n# widen the mirror\n"),
        "reason": "pending-for-the-dashboard",
    });
    let (st, c) = http(
        d.addr,
        "POST",
        "/api/v1/changes",
        Some(&d.operate),
        Some(&body.to_string()),
    );
    assert_eq!(st, 200, "{c}");

    let b = Browser::start();
    b.goto(&format!("http://{}/", d.addr));
    b.wait_for(
        "!document.getElementById('login').classList.contains('hidden')",
        "the login form",
        20,
    );
    let field = b.find("#token");
    b.call(
        "POST",
        &format!("/element/{field}/value"),
        serde_json::json!({ "text": d.read }),
    );
    let button = b.find("#login-button");
    b.call(
        "POST",
        &format!("/element/{button}/click"),
        serde_json::json!({}),
    );
    b.wait_for(
        "document.body.dataset.role === 'read'",
        "logged in as read",
        20,
    );
    let row = |port: u16, listening: bool| {
        format!(
            "document.querySelector('#ports tr[data-port=\"{port}\"][data-listening=\"{listening}\"]')"
        )
    };
    b.wait_for(&row(up_port, true), "the listening port's row", 30);
    b.wait_for(&row(later, false), "the silent port's row, down", 30);
    b.wait_for(
        "[...document.querySelectorAll('#changes tbody tr')].some(r => r.innerText.includes('pending-for-the-dashboard') && r.innerText.includes('+ # widen the mirror'))",
        "the pending change with its diff",
        30,
    );
    let text = b.script(&format!("return {}.innerText;", row(up_port, true)));
    assert!(text.as_str().unwrap().contains("rsync-mirror"), "{text}");
    // A read token sees no button that changes anything.
    assert_eq!(
        b.script("return [...document.querySelectorAll('.operate')].every(e => e.classList.contains('hidden'));"),
        Value::Bool(true)
    );
    // A listener appears: the page hears of it over the event stream (it does not poll).
    let _now_up = TcpListener::bind(("127.0.0.1", later)).unwrap();
    b.wait_for(
        &row(later, true),
        "the new listener, over the event stream",
        30,
    );
    assert_eq!(
        b.script("return document.getElementById('live').textContent;"),
        "live"
    );
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    b.screenshot(&out);
    assert!(std::fs::metadata(&out).unwrap().len() > 1000);
    drop(up);
}
