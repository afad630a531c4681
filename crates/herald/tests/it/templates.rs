//! Message templates (`X-Template`, docs/COMPATIBILITY.md §2.2, docs/TEMPLATES.md):
//! ntfy's documented inline examples, the built-in templates over the services'
//! documented webhook payloads, `template-dir`, and every template error code.

use serde_json::Value;

use crate::fixture::{TestServer, expect_error, expect_json};

const GRAFANA: &str = include_str!("payloads/grafana.json");
const ALERTMANAGER: &str = include_str!("payloads/alertmanager.json");
const GITHUB_STAR: &str = include_str!("payloads/github_star.json");
const GITHUB_PR: &str = include_str!("payloads/github_pull_request.json");
const GITHUB_PUSH: &str = include_str!("payloads/github_push.json");

async fn post(
    s: &TestServer,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> reqwest::Response {
    let mut req = s.client.post(s.url(path)).body(body.to_string());
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.send().await.expect("publish")
}

/// Publishes and returns the stored message as a subscriber sees it.
async fn templated(
    s: &TestServer,
    topic: &str,
    query: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Value {
    let resp = post(s, &format!("/{topic}?{query}"), headers, body).await;
    let published = expect_json(resp, 200).await;
    let polled = s.poll(topic, "").await;
    let m = polled.last().expect("a message").clone();
    assert_eq!(m["id"], published["id"]);
    m
}

#[tokio::test]
async fn ntfy_docs_inline_examples() {
    let s = TestServer::start(&[]);
    // docs.ntfy.sh/publish/#inline-templating: the short example, as query parameters.
    let body = r#"{"hostname": "phil-pc", "error": {"level": "severe", "desc": "Disk has run out of space"}}"#;
    let m = templated(
        &s,
        "tpl1",
        "tpl=yes&t=%7B%7B.hostname%7D%7D:+A+%7B%7B.error.level%7D%7D+error+has+occurred&m=Error+message:+%7B%7B.error.desc%7D%7D",
        &[],
        body,
    )
    .await;
    assert_eq!(m["title"], "phil-pc: A severe error has occurred");
    assert_eq!(m["message"], "Error message: Disk has run out of space");

    // The Grafana example: the encoded webhook URL from the docs.
    let m = templated(
        &s,
        "tpl2",
        "tpl=1&t=%7B%7B.title%7D%7D&m=%7B%7Brange%20.alerts%7D%7D%7B%7B.annotations.summary%7D%7D%5Cn%5CnValues%3A%5Cn%7B%7Brange%20%24k%2C%24v%20%3A%3D%20.values%7D%7D-%20%7B%7B%24k%7D%7D%3D%7B%7B%24v%7D%7D%5Cn%7B%7Bend%7D%7D%7B%7Bend%7D%7D",
        &[],
        GRAFANA,
    )
    .await;
    assert_eq!(m["title"], "[FIRING:2]  (blue)");
    assert_eq!(
        m["message"],
        "This alert was triggered for zone us-1\n\nValues:\n- B=44.23943737541908\n- C=1\nThis alert was triggered for zone eu-1\n\nValues:\n- B=44.23943737541908\n- C=1"
    );

    // Headers work too, and the priority is a template.
    let m = templated(
        &s,
        "tpl3",
        "",
        &[
            ("X-Template", "yes"),
            ("X-Title", "{{.status | title}}"),
            ("X-Message", "{{len .alerts}} alerts"),
            (
                "X-Priority",
                r#"{{if eq .status "firing"}}urgent{{else}}low{{end}}"#,
            ),
        ],
        ALERTMANAGER,
    )
    .await;
    assert_eq!(m["title"], "Firing");
    assert_eq!(m["message"], "2 alerts");
    assert_eq!(m["priority"], 5);
}

#[tokio::test]
async fn builtin_grafana() {
    let s = TestServer::start(&[]);
    let m = templated(&s, "graf", "template=grafana", &[], GRAFANA).await;
    assert_eq!(m["title"], "🔥 [FIRING:2]  (blue)");
    let message = m["message"].as_str().unwrap();
    assert!(
        message.starts_with("**Firing**\n\nLabels:\n - alertname = T2"),
        "{message}"
    );
    let resolved = GRAFANA
        .replace(
            "\"status\": \"firing\",\n  \"orgId\"",
            "\"status\": \"resolved\",\n  \"orgId\"",
        )
        .replace("\"message\": \"**Firing**", "\"unused\": \"");
    let m = templated(&s, "graf", "template=grafana", &[], &resolved).await;
    assert_eq!(m["title"], "✅ [FIRING:2]  (blue)");
    assert_eq!(
        m["message"],
        "[FIRING] High memory usage: This alert was triggered for zone us-1\n[FIRING] High CPU usage: This alert was triggered for zone eu-1"
    );
}

#[tokio::test]
async fn builtin_alertmanager() {
    let s = TestServer::start(&[]);
    let m = templated(&s, "am", "", &[("Template", "alertmanager")], ALERTMANAGER).await;
    assert_eq!(m["title"], "🚨 [FIRING:2] InstanceDown");
    assert_eq!(
        m["message"],
        "InstanceDown (firing)\nInstance down\nhost-1:9100 of job node has been down for more than 5 minutes.\n\
         instance: host-1:9100\njob: node\nseverity: critical\nSince: 2024-05-01T10:00:00.000Z\n\
         http://prometheus.example.com:9090/graph?g0.expr=up+%3D%3D+0\n\n\
         InstanceDown (resolved)\nInstance down\ninstance: host-2:9100\njob: node\nseverity: critical\n\
         Since: 2024-05-01T09:00:00.000Z\nUntil: 2024-05-01T09:30:00.000Z\n\
         http://prometheus.example.com:9090/graph?g0.expr=up+%3D%3D+0"
    );
    // A status the template does not know fails as ntfy's does (40045).
    let bad = ALERTMANAGER.replace(
        "\"status\": \"firing\",\n  \"receiver\"",
        "\"status\": \"odd\",\n  \"receiver\"",
    );
    expect_error(
        post(&s, "/am?tpl=alertmanager", &[], &bad).await,
        400,
        40045,
    )
    .await;
}

#[tokio::test]
async fn builtin_github() {
    let s = TestServer::start(&[]);
    let m = templated(&s, "gh", "template=github", &[], GITHUB_STAR).await;
    assert_eq!(m["title"], "⭐ Codertocat starred Codertocat/Hello-World");
    assert_eq!(
        m["message"],
        "Stargazer: https://github.com/Codertocat\nRepository: https://github.com/Codertocat/Hello-World\nStars: 1"
    );
    let m = templated(&s, "gh", "template=github", &[], GITHUB_PR).await;
    assert_eq!(
        m["title"],
        "🔀 PR #2 opened: Update the README with new information."
    );
    assert_eq!(
        m["message"],
        "changes → master by Codertocat\n\nThis is a pretty simple change that we need to pull into master.\n\nhttps://github.com/Codertocat/Hello-World/pull/2"
    );
    let m = templated(&s, "gh", "template=github", &[], GITHUB_PUSH).await;
    assert_eq!(
        m["title"],
        "📦 2 new commits on main in Codertocat/Hello-World"
    );
    assert_eq!(
        m["message"],
        "• a10867b Fix the README (Codertocat)\n• b2b3c4d Add tests (Octocat)\nhttps://github.com/Codertocat/Hello-World/compare/6113728f27ae...000000000000"
    );
    expect_error(
        post(&s, "/gh?template=github", &[], r#"{"action":"deleted"}"#).await,
        400,
        40045,
    )
    .await;
}

#[tokio::test]
async fn template_dir_files_and_overrides() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("myapp.yml"),
        "title: |\n  {{- if eq .status \"down\" }}🚨 {{ .name }} is down{{ else }}✅ {{ .name }} is up{{ end }}\n\
         message: \"Load: {{ .load }}%\"\npriority: '{{ if eq .status \"down\" }}5{{ else }}2{{ end }}'\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("github.yml"),
        "title: overridden {{ .x }}\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("broken.yml"), "title: [unclosed\n").unwrap();
    // A template over 32 KiB (40056; a request head cannot carry one).
    std::fs::write(
        dir.path().join("big.yml"),
        format!("message: \"{}\"\n", "x".repeat(33 * 1024)),
    )
    .unwrap();
    let s = TestServer::start(&["--template-dir", dir.path().to_str().unwrap()]);
    let m = templated(
        &s,
        "myapp",
        "tpl=myapp",
        &[],
        r#"{"status":"down","name":"db1","load":97.5}"#,
    )
    .await;
    assert_eq!(m["title"], "🚨 db1 is down");
    assert_eq!(m["message"], "Load: 97.5%");
    assert_eq!(m["priority"], 5);
    // The file wins over the built-in; fields it lacks keep the request's.
    let m = templated(&s, "myapp", "tpl=github&m=kept", &[], r#"{"x":1}"#).await;
    assert_eq!(m["title"], "overridden 1");
    assert_eq!(m["message"], "kept");
    expect_error(post(&s, "/myapp?tpl=broken", &[], "{}").await, 400, 40048).await;
    expect_error(post(&s, "/myapp?tpl=big", &[], "{}").await, 400, 40056).await;
    expect_error(post(&s, "/myapp?tpl=nope", &[], "{}").await, 400, 40047).await;
    expect_error(post(&s, "/myapp?tpl=../myapp", &[], "{}").await, 400, 40047).await;
}

#[tokio::test]
async fn every_template_error_code() {
    let s = TestServer::start(&[]);
    let cases: &[(&str, &str, u64)] = &[
        ("tpl=yes&m=x", "not json", 40042),
        ("tpl=yes&m=%7B%7B.a", "{}", 40043),
        ("tpl=yes&m=%7B%7Bnofunc%7D%7D", "{}", 40043),
        (
            "tpl=yes&m=%7B%7Bdefine+%22x%22%7D%7Da%7B%7Bend%7D%7D",
            "{}",
            40044,
        ),
        ("tpl=yes&m=%7B%7Btemplate+%22x%22%7D%7D", "{}", 40044),
        ("tpl=yes&m=%7B%7Bcall+.a%7D%7D", "{}", 40044),
        ("tpl=yes&m=%7B%7B.a.b%7D%7D", r#"{"a":1}"#, 40045),
        ("tpl=yes&m=%7B%7Bfail+%22no%22%7D%7D", "{}", 40045),
        ("tpl=yes&m=%7B%7Brepeat+5000+%22x%22%7D%7D", "{}", 40041),
        (
            "tpl=yes&m=%7B%7Brange+100000%7D%7D%7B%7Brange+100000%7D%7D%7B%7Bend%7D%7D%7B%7Bend%7D%7D",
            "{}",
            40055,
        ),
        ("tpl=yes&p=%7B%7B.p%7D%7D", r#"{"p":"loud"}"#, 40007),
        ("tpl=nope", "{}", 40047),
    ];
    for (query, body, code) in cases {
        let e = expect_error(
            post(&s, &format!("/errs?{query}"), &[], body).await,
            400,
            *code,
        )
        .await;
        assert!(e["error"].as_str().unwrap().starts_with("invalid"), "{e}");
    }
    // A body over 32 KiB (the message limit is smaller) is not read as JSON.
    let body = format!("{{\"a\":\"{}\"}}", "x".repeat(33 * 1024));
    expect_error(post(&s, "/errs?tpl=yes&m=x", &[], &body).await, 413, 41303).await;
    // Nothing was published by any of these.
    assert!(s.poll("errs", "").await.is_empty());
    // `tpl=no` is off: the body is the message.
    let m = templated(&s, "off", "tpl=no", &[], "{{.a}}").await;
    assert_eq!(m["message"], "{{.a}}");
}
