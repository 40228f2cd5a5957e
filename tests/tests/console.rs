//! The web console (`/console/`) in a real headless browser against real `wraft node`
//! processes: Chromium loads the page with a bearer token in the URL fragment, runs its
//! scripts against the node's HTTPS API, and prints the DOM, which the test reads through the
//! page's `data-testid` / `data-node-id` attributes. Screenshots are kept under the target
//! directory (`console-screenshots/`) and their paths printed.
//!
//! The browser runs with `--ignore-certificate-errors`: trusting the cluster's own CA would
//! need an NSS database in the profile, which would test Chromium rather than the console.
//!
//! Without Chromium the test is skipped with a message, unless `WRAFT_REQUIRE_BROWSER` is set
//! (`make test` sets it; `make deps` installs the `chromium` package).

use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use wraft_tests::{Cluster, kv_put, mint_token, noise};

/// How long an election may take.
const LEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// Wall-clock bound of one browser run, page load and scripts included.
const BROWSER_RUN_TIMEOUT_MS: u64 = 60_000;
/// Virtual time the page gets to run its scripts (it polls every second).
const PAGE_BUDGET_MS: u64 = 4_000;
/// How long the test keeps reloading the page for a condition to show.
const SHOW_TIMEOUT: Duration = Duration::from_secs(45);

/// The Chromium binary, if one is installed.
fn chromium() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .flat_map(|name| std::env::split_paths(&path).map(move |dir| dir.join(name)))
        .find(|p| p.is_file())
}

/// A headless Chromium with its own throwaway profile.
struct Browser {
    bin: PathBuf,
    dir: tempfile::TempDir,
}

/// A browser process in its own process group, killed (group and all) when dropped.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            // SAFETY: kill(2) on the process group of a child this test started (it was made
            // a group leader by `process_group(0)`) and has not reaped yet.
            unsafe { libc::kill(-(self.0.id() as i32), libc::SIGKILL) };
        }
        let _ = self.0.wait();
    }
}

impl Browser {
    fn new(bin: PathBuf) -> Browser {
        let dir = tempfile::Builder::new()
            .prefix("wraft-console-")
            .tempdir()
            .expect("temp dir");
        Browser { bin, dir }
    }

    /// Run Chromium headless on `url` with `extra` flags; its stdout. Panics (after killing
    /// it) if it runs longer than `BROWSER_RUN_TIMEOUT_MS`, or if the page threw an uncaught
    /// error (Chromium logs the page's console to stderr).
    fn run(&self, url: &str, extra: &[String]) -> String {
        let out_path = self.dir.path().join("stdout");
        let err_path = self.dir.path().join("stderr");
        let child = Command::new(&self.bin)
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--ignore-certificate-errors",
                "--no-first-run",
                "--disable-extensions",
                "--disable-background-networking",
                "--enable-logging=stderr",
                "--v=0",
            ])
            .arg(format!(
                "--user-data-dir={}",
                self.dir.path().join("profile").display()
            ))
            .arg(format!("--virtual-time-budget={PAGE_BUDGET_MS}"))
            .args(extra)
            .arg(url)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out_path).expect("stdout file"))
            .stderr(std::fs::File::create(&err_path).expect("stderr file"))
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", self.bin.display()));
        let mut running = Running(child);
        let deadline = Instant::now() + Duration::from_millis(BROWSER_RUN_TIMEOUT_MS);
        let status = loop {
            if let Some(status) = running.0.try_wait().expect("wait for chromium") {
                break status;
            }
            if Instant::now() > deadline {
                drop(running);
                panic!(
                    "chromium ran longer than {BROWSER_RUN_TIMEOUT_MS} ms on {url}; stderr:\n{}",
                    std::fs::read_to_string(&err_path).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        drop(running);
        assert!(
            status.success(),
            "chromium exited with {status} on {url}; stderr:\n{}",
            std::fs::read_to_string(&err_path).unwrap_or_default()
        );
        let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
        let uncaught: Vec<&str> = stderr
            .lines()
            .filter(|l| l.contains(":CONSOLE") && l.contains("Uncaught"))
            .collect();
        assert!(
            uncaught.is_empty(),
            "the console threw on {url}:\n{}",
            uncaught.join("\n")
        );
        std::fs::read_to_string(&out_path).expect("chromium's output")
    }

    /// The page's DOM after its scripts ran for `PAGE_BUDGET_MS` of virtual time.
    fn dom(&self, url: &str) -> Dom {
        Dom(self.run(url, &["--dump-dom".to_owned()]))
    }

    /// Save a screenshot of `url` to `path`; panics unless it is a PNG of more than 10 KB.
    fn screenshot(&self, url: &str, path: &Path) {
        let _ = std::fs::remove_file(path);
        self.run(
            url,
            &[
                format!("--screenshot={}", path.display()),
                "--window-size=1280,1000".to_owned(),
                "--hide-scrollbars".to_owned(),
            ],
        );
        let bytes = std::fs::read(path)
            .unwrap_or_else(|e| panic!("no screenshot at {}: {e}", path.display()));
        assert!(
            bytes.starts_with(b"\x89PNG") && bytes.len() > 10 * 1024,
            "{} is not a PNG of more than 10 KB ({} bytes)",
            path.display(),
            bytes.len()
        );
        eprintln!("console screenshot: {}", path.display());
    }
}

/// A dumped DOM, read through the console's test attributes.
struct Dom(String);

impl Dom {
    /// The start tag of the first element with `attr="value"`.
    fn tag(&self, attr: &str, value: &str) -> Option<&str> {
        let at = self.0.find(&format!("{attr}=\"{value}\""))?;
        let start = self.0[..at].rfind('<')?;
        let end = at + self.0[at..].find('>')?;
        Some(&self.0[start..=end])
    }

    /// The text of the element `data-testid="id"` (its first text run).
    fn text(&self, id: &str) -> Option<String> {
        let needle = format!("data-testid=\"{id}\"");
        let at = self.0.find(&needle)?;
        let rest = &self.0[at..];
        let from = rest.find('>')? + 1;
        let to = from + rest[from..].find('<')?;
        Some(rest[from..to].trim().to_owned())
    }

    fn number(&self, id: &str) -> Option<u64> {
        self.text(id)?.parse().ok()
    }

    /// Attribute `attr` of the first element with `id_attr="id_value"`.
    fn attr_of(&self, id_attr: &str, id_value: &str, attr: &str) -> Option<String> {
        let tag = self.tag(id_attr, id_value)?;
        let at = tag.find(&format!(" {attr}=\""))? + attr.len() + 3;
        Some(tag[at..at + tag[at..].find('"')?].to_owned())
    }

    /// Attribute `attr` of the cluster row of node `id`.
    fn node_attr(&self, id: u64, attr: &str) -> Option<String> {
        self.attr_of("data-node-id", &id.to_string(), attr)
    }

    fn ready(&self) -> bool {
        self.0.contains("data-ready=\"1\"")
    }

    fn rows(&self) -> usize {
        self.0.matches("<tr data-node-id=").count()
    }
}

/// Load the console until `check` accepts what it shows; the last DOM if it never does.
fn show(browser: &Browser, url: &str, what: &str, check: impl Fn(&Dom) -> bool) -> Dom {
    let deadline = Instant::now() + SHOW_TIMEOUT;
    loop {
        let dom = browser.dom(url);
        if check(&dom) {
            return dom;
        }
        if Instant::now() > deadline {
            panic!(
                "the console never showed {what} within {SHOW_TIMEOUT:?}; last DOM:\n{}",
                dom.0
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// `POST` `body` to `path` with `curl` and a bearer token; the JSON answer (panics on an error).
fn post(certs: &Path, addr: SocketAddr, token: &str, path: &str, body: &Value) -> Value {
    let out = Command::new("curl")
        .args(["-sS", "--fail-with-body", "--max-time", "30", "--cacert"])
        .arg(certs.join("ca.crt"))
        .args(["-H", &format!("Authorization: Bearer {token}")])
        .args(["-H", "Content-Type: application/json", "--data-binary"])
        .arg(body.to_string())
        .arg(format!("https://127.0.0.1:{}{path}", addr.port()))
        .output()
        .expect("curl runs (make deps installs it)");
    let answer = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "POST {path} failed: {answer} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(&answer).expect("JSON answer")
}

/// Propose `command` to kv through node `addr`; the answer's log index.
fn put(certs: &Path, addr: SocketAddr, token: &str, key: &str, value: &str) -> u64 {
    let command = json!({"op": "put", "key": key, "value": value});
    let v = post(certs, addr, token, "/v1/machines/kv/propose", &command);
    v["index"]
        .as_u64()
        .unwrap_or_else(|| panic!("no index in {v}"))
}

/// Where screenshots go: `<target dir>/console-screenshots/`, next to the build's output.
fn screenshot_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    // <target>/<profile>/deps/<test binary>
    let target = exe
        .ancestors()
        .nth(3)
        .map(Path::to_owned)
        .unwrap_or_else(std::env::temp_dir);
    let dir = target.join("console-screenshots");
    std::fs::create_dir_all(&dir).expect("screenshot dir");
    dir
}

/// A browser, or `None` (the test is skipped, with a message) when Chromium is not installed;
/// panics instead when `WRAFT_REQUIRE_BROWSER` is set.
fn browser_or_skip() -> Option<Browser> {
    let Some(bin) = chromium() else {
        if std::env::var_os("WRAFT_REQUIRE_BROWSER").is_some() {
            panic!(
                "WRAFT_REQUIRE_BROWSER is set but no chromium is on PATH (make deps installs it)"
            );
        }
        eprintln!(
            "SKIPPED: no chromium on PATH (make deps installs it; set WRAFT_REQUIRE_BROWSER to fail instead)"
        );
        return None;
    };
    Some(Browser::new(bin))
}

fn console_url(addr: SocketAddr, token: &str) -> String {
    format!("https://127.0.0.1:{}/console/#token={token}", addr.port())
}

#[tokio::test(flavor = "multi_thread")]
async fn console_shows_cluster_after_a_write_and_after_a_leader_failover() {
    let Some(browser) = browser_or_skip() else {
        return;
    };
    let mut cluster = Cluster::start(3);
    let leader = cluster.deploy_kv().await;
    let certs = cluster.certs_dir().to_owned();
    let admin = mint_token(&certs, "console", "admin");
    let shots = screenshot_dir();

    // A write through the API, then the console on the leader.
    let leader_addr = cluster.http_addr(leader).await;
    let index = put(&certs, leader_addr, &admin, "hello", "console");
    let snapshot = post(&certs, leader_addr, &admin, "/v1/snapshots", &json!({}))["index"]
        .as_u64()
        .expect("snapshot index");
    // The fragment also runs a query through the page's form once it is up.
    let url = format!(
        "{}&machine=kv&consistency=linearizable&query=%7B%22op%22%3A%22get%22%2C%22key%22%3A%22hello%22%7D",
        console_url(leader_addr, &admin)
    );
    let dom = show(&browser, &url, "the write's commit index", |d| {
        d.ready()
            && d.number("commit-index").is_some_and(|c| c >= index)
            && d.attr_of("data-testid", "cmd-result", "data-state")
                .as_deref()
                == Some("ok")
            && d.tag("data-snapshot-index", &snapshot.to_string())
                .is_some()
    });
    let answer = dom.text("cmd-result").expect("the query's answer");
    assert!(
        answer.contains("console"),
        "the query read the write: {answer}"
    );
    assert_eq!(dom.number("leader"), Some(leader), "leader shown");
    assert_eq!(dom.number("node-id"), Some(leader), "the node serving it");
    assert_eq!(dom.rows(), 3, "one row per member");
    for id in cluster.ids() {
        let state = dom.node_attr(id, "data-state");
        if id == leader {
            assert_eq!(state.as_deref(), Some("leader"), "node {id}");
        } else {
            assert!(state.is_some(), "node {id} has a row");
        }
    }
    assert_eq!(
        dom.attr_of("data-testid", "conn", "data-state").as_deref(),
        Some("ok")
    );
    assert!(dom.tag("data-machine", "kv").is_some(), "kv is listed");
    let last = dom.text("last-snapshot").expect("last snapshot line");
    assert!(
        last.contains(&format!("at index {snapshot}")),
        "the machines panel names the latest snapshot: {last}"
    );
    let term_before = dom.number("term").expect("term shown");
    browser.screenshot(&url, &shots.join("1-after-write.png"));

    // A refused token is said to be refused, and the sign-in form appears.
    let refused = browser.dom(&console_url(leader_addr, "not-a-token"));
    assert_eq!(
        refused
            .attr_of("data-testid", "conn", "data-state")
            .as_deref(),
        Some("unauthorized"),
        "a bad token is reported"
    );
    assert!(
        !refused
            .tag("data-testid", "token-box")
            .expect("sign-in box")
            .contains("hidden"),
        "the sign-in form is shown"
    );

    // Fail the leader over; write again through a survivor, so the old leader falls behind.
    cluster.kill(leader);
    let survivors: Vec<u64> = cluster.ids().into_iter().filter(|&i| i != leader).collect();
    let new_leader = cluster
        .wait_for_leader_among(&survivors, LEADER_TIMEOUT)
        .await;
    let follower = *survivors
        .iter()
        .find(|&&i| i != new_leader)
        .expect("a surviving follower");
    let follower_addr = cluster.http_addr(follower).await;
    let index2 = put(&certs, follower_addr, &admin, "after", "failover");

    // The console on the surviving follower shows the leader's view: the new leader, and
    // the old one unreachable and lagging.
    let url = console_url(follower_addr, &admin);
    let dom = show(&browser, &url, "the new leader and the old one down", |d| {
        d.ready()
            && d.number("leader") == Some(new_leader)
            && d.number("commit-index").is_some_and(|c| c >= index2)
            && d.node_attr(leader, "data-state")
                .is_some_and(|s| s != "connected" && s != "leader")
    });
    assert_eq!(dom.number("node-id"), Some(follower));
    assert!(
        dom.number("term").expect("term") > term_before,
        "a new term"
    );
    assert_eq!(
        dom.node_attr(new_leader, "data-state").as_deref(),
        Some("leader")
    );
    let old_lag: u64 = dom
        .node_attr(leader, "data-lag")
        .and_then(|l| l.parse().ok())
        .expect("the old leader's lag");
    assert!(old_lag > 0, "the old leader is behind (lag {old_lag})");
    assert_eq!(
        dom.node_attr(follower, "data-state").as_deref(),
        Some("connected")
    );
    browser.screenshot(&url, &shots.join("2-after-failover.png"));
}

/// Snapshot data written, MiB, and the leader's send cap, bytes/s: the file (~4.4 MiB after
/// compression) takes about 17 s, in 64 KiB chunks so that progress shows from the start:
/// long enough for the console to be loaded (and reloaded) while it runs on a loaded machine.
const XFER_MIB: u64 = 6;
const XFER_CAP: u64 = 256 << 10;

#[tokio::test(flavor = "multi_thread")]
async fn console_shows_a_live_snapshot_transfer_with_its_progress_and_rate() {
    let Some(browser) = browser_or_skip() else {
        return;
    };
    let mut cluster = Cluster::start_with(3, |c| {
        c.snapshot.hint_threshold_entries = 0;
        c.snapshot.log_entries_max = 0;
        c.snapshot.log_retain_margin_entries = 10;
        c.snapshot.transfer_bytes_per_sec_max = XFER_CAP;
        c.snapshot.chunk_bytes = 64 << 10;
    });
    let leader = cluster.deploy_kv().await;
    let follower = *cluster
        .ids()
        .iter()
        .find(|&&i| i != leader)
        .expect("a follower");
    // The follower misses the writes and the snapshot compacts them away: it can only catch
    // up by InstallSnapshot, capped at XFER_CAP.
    cluster.kill(follower);
    let client = cluster.client().await;
    for i in 0..XFER_MIB * 32 {
        client
            .propose("kv", &kv_put(&format!("big{i:05}"), &noise(i, 32 << 10)))
            .await
            .expect("put");
    }
    // Every member up snapshots, so that whichever leads once the follower is back has
    // compacted what it missed (on a loaded machine leadership can move meanwhile: a fresh-clone
    // run lost its transfer when the snapshot was taken on a leader that had just stepped down).
    for id in cluster.running() {
        client
            .snapshot_trigger_and_wait(Some(cluster.addr(id)), Duration::from_secs(60))
            .await
            .expect("snapshot");
    }
    cluster.restart(follower);
    let leader = cluster.wait_for_leader(Duration::from_secs(30)).await;

    let certs = cluster.certs_dir().to_owned();
    let reader = mint_token(&certs, "watcher", "read");
    let url = console_url(cluster.http_addr(leader).await, &reader);
    let attr = |d: &Dom, a: &str| -> Option<u64> {
        d.attr_of("data-testid", "live-transfer", a)?.parse().ok()
    };
    // Past the limiter's first burst (64 KiB at once, then the cap): a page sampled in the first
    // tens of milliseconds shows that burst over a tiny time, several times the cap (seen once
    // in a fresh-clone run: 1.39 MB/s). A second's worth at the cap bounds the rate shown by
    // (64 KiB + cap × t) / t < 2 × cap.
    let dom = show(&browser, &url, "the transfer part-way", |d| {
        d.ready()
            && attr(d, "data-to") == Some(follower)
            && attr(d, "data-done")
                .zip(attr(d, "data-file-bytes"))
                .is_some_and(|(done, len)| done >= XFER_CAP && done < len)
            && attr(d, "data-rate").is_some_and(|r| r > 0)
    });
    assert_eq!(attr(&dom, "data-from"), Some(leader));
    let file_bytes = attr(&dom, "data-file-bytes").expect("size");
    // Letters carry 4.7 bits each: the compressed file is about 60 % of what was written.
    assert!(
        file_bytes > (XFER_MIB << 20) / 2,
        "the snapshot holds the {XFER_MIB} MiB written: {file_bytes} bytes"
    );
    // The rate shown is the capped one (the limiter lets a burst through at the start).
    let rate = attr(&dom, "data-rate").expect("rate");
    assert!(rate < 4 * XFER_CAP, "rate {rate} B/s, cap {XFER_CAP} B/s");
    let figures = dom.text("transfer-figures").expect("figures");
    assert!(figures.contains("/s"), "a rate is shown: {figures}");
    browser.screenshot(&url, &screenshot_dir().join("3-live-transfer.png"));

    // When it is over the transfer leaves the page.
    show(
        &browser,
        &url,
        "no transfer once the follower has caught up",
        |d| d.ready() && d.tag("data-testid", "no-transfer").is_some(),
    );
}
