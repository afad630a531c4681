//! The interpreter against ntfy's documented examples and Go's semantics, and
//! property tests: random templates and bodies never panic and stay within budget.

use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::*;

fn run(template: &str, json: &str) -> Result<String, TemplateError> {
    let data = Value::from_json(&serde_json::from_str(json).unwrap());
    render(template, &data, Instant::now() + Duration::from_secs(5))
}

fn ok(template: &str, json: &str) -> String {
    run(template, json).unwrap_or_else(|e| panic!("{template}: {e}"))
}

#[test]
fn ntfy_docs_short_example() {
    // docs.ntfy.sh/publish/#inline-templating, "an easier example".
    let body = r#"{"hostname": "phil-pc", "error": {"level": "severe", "desc": "Disk has run out of space"}}"#;
    assert_eq!(
        ok("{{.hostname}}: A {{.error.level}} error has occurred", body),
        "phil-pc: A severe error has occurred"
    );
    assert_eq!(
        ok("Error message: {{.error.desc}}", body),
        "Error message: Disk has run out of space"
    );
}

#[test]
fn ntfy_docs_grafana_inline_example() {
    // The message template from the docs' Grafana example, literal `\n` included.
    let tpl = r#"{{range .alerts}}{{.annotations.summary}}\n\nValues:\n{{range $k,$v := .values}}- {{$k}}={{$v}}\n{{end}}{{end}}"#;
    let body = r#"{"alerts":[{"annotations":{"summary":"15m load average too high"},
        "values":{"B":18.98211314475876,"C":0}}],"title":"[RESOLVED] Load avg"}"#;
    assert_eq!(
        ok(tpl, body),
        "15m load average too high\n\nValues:\n- B=18.98211314475876\n- C=0"
    );
    assert_eq!(ok("{{.title}}", body), "[RESOLVED] Load avg");
}

#[test]
fn go_semantics() {
    let body = r#"{"a": {"b": [1, 2, 3]}, "s": "x", "n": 1000000, "t": true, "z": null, "e": ""}"#;
    assert_eq!(ok("{{.missing}}", body), "<no value>");
    assert_eq!(ok("{{.z}}", body), "<no value>");
    assert_eq!(ok("{{.n}}", body), "1e+06");
    assert_eq!(ok("{{len .a.b}}", body), "3");
    assert_eq!(ok("{{index .a.b 1}}", body), "2");
    assert_eq!(
        ok("{{range $i, $v := .a.b}}{{$i}}:{{$v}} {{end}}", body),
        "0:1 1:2 2:3"
    );
    assert_eq!(
        ok(
            "{{range .a.b}}{{if eq . 2.0}}{{break}}{{end}}{{.}}{{end}}",
            body
        ),
        "1"
    );
    assert_eq!(
        ok(
            "{{range .a.b}}{{if eq . 2.0}}{{continue}}{{end}}{{.}}{{end}}",
            body
        ),
        "13"
    );
    assert_eq!(
        ok("{{range .e}}x{{else}}empty{{end}}", r#"{"e": []}"#),
        "empty"
    );
    assert_eq!(ok("{{with .s}}[{{.}}]{{end}}", body), "[x]");
    assert_eq!(ok("{{if and .t .s}}yes{{else}}no{{end}}", body), "yes");
    assert_eq!(
        ok("{{if or .z .e}}yes{{else if .t}}maybe{{end}}", body),
        "maybe"
    );
    assert_eq!(ok("{{$x := 1}}{{if .t}}{{$x = 2}}{{end}}{{$x}}", body), "2");
    assert_eq!(ok("{{.a}}", body), "map[b:[1 2 3]]");
    assert_eq!(
        ok(r#"{{printf "%s=%05.1f|%-3d|%q" .s 3.14159 7 "a"}}"#, body),
        "x=003.1|7  |\"a\""
    );
    assert_eq!(ok(r#"{{printf "%d" .n}}"#, body), "%!d(float64=1e+06)");
    assert_eq!(ok("{{print 1 2 \"a\" 3}}", body), "1 2a3");
    assert_eq!(ok("  {{- .s -}}  \n", body), "x");
    assert_eq!(ok("{{/* a comment */}}ok", body), "ok");
    assert_eq!(ok("{{range 3}}{{.}}{{end}}", body), "012");
    // `and` stops at the first false value, so the comparison is never made.
    assert_eq!(
        ok(r#"{{if and .z (eq .z.x "a")}}y{{else}}n{{end}}"#, body),
        "n"
    );
}

#[test]
fn sprig_functions() {
    let body = r#"{"s": "hello world", "l": ["b", "a", "b"], "n": 7.9}"#;
    assert_eq!(ok("{{.s | title}}", body), "Hello World");
    assert_eq!(ok("{{.s | upper | trunc 5}}", body), "HELLO");
    assert_eq!(ok(r#"{{.missing | default "none"}}"#, body), "none");
    assert_eq!(ok(r#"{{.l | join ","}}"#, body), "b,a,b");
    assert_eq!(ok(r#"{{.l | uniq | sortAlpha | join ","}}"#, body), "a,b");
    assert_eq!(
        ok(
            "{{add .n 1}} {{sub 5 2}} {{mul 2 3}} {{div 7 2}} {{mod 7 2}}",
            body
        ),
        "8 3 6 3 1"
    );
    assert_eq!(
        ok("{{.n | int}} {{.n | floor}} {{round .n 0}}", body),
        "7 7 8"
    );
    assert_eq!(
        ok(r#"{{dict "a" 1 "b" "x" | toJson}}"#, body),
        r#"{"a":1,"b":"x"}"#
    );
    assert_eq!(ok(r#"{{"<a>" | toJson}}"#, body), r#""\u003ca\u003e""#);
    assert_eq!(ok(r#"{{.s | replace "o" "0"}}"#, body), "hell0 w0rld");
    assert_eq!(ok(r#"{{.s | contains "wor"}}"#, body), "true");
    assert_eq!(ok(r#"{{ternary "y" "n" true}}"#, body), "y");
    assert_eq!(ok(r#"{{.s | b64enc | b64dec}}"#, body), "hello world");
    assert_eq!(
        ok(r#"{{"a b" | quote}} {{"x" | squote}}"#, body),
        r#""a b" 'x'"#
    );
    assert_eq!(ok(r#"{{"a\nb" | indent 2}}"#, body), "a\n  b");
    assert_eq!(
        ok(r#"{{(first .l)}}{{last .l}}{{len (rest .l)}}"#, body),
        "bb2"
    );
    assert_eq!(
        ok(r#"{{$p := splitList " " .s}}{{index $p 1}}"#, body),
        "world"
    );
}

#[test]
fn errors_have_ntfy_meanings() {
    let body = r#"{"a": 1}"#;
    assert!(matches!(run("{{.a", body), Err(TemplateError::Parse(_))));
    assert!(matches!(
        run("{{nosuchfunc}}", body),
        Err(TemplateError::Parse(_))
    ));
    assert!(matches!(
        run("{{$undefined}}", body),
        Err(TemplateError::Parse(_))
    ));
    assert!(matches!(run("{{end}}", body), Err(TemplateError::Parse(_))));
    assert!(matches!(
        run("{{break}}", body),
        Err(TemplateError::Parse(_))
    ));
    for t in [
        r#"{{define "x"}}a{{end}}"#,
        r#"{{template "x"}}"#,
        r#"{{block "x" .}}a{{end}}"#,
        "{{call .a}}",
        "{{if call .a}}{{end}}",
    ] {
        assert_eq!(run(t, body), Err(TemplateError::Disallowed), "{t}");
    }
    assert!(matches!(run(r#"{{fail "nope"}}"#, body), Err(TemplateError::Exec(m)) if m == "nope"));
    assert!(matches!(run("{{.a.b}}", body), Err(TemplateError::Exec(_))));
    assert!(matches!(run("{{.x.y}}", body), Err(TemplateError::Exec(_))));
    assert!(matches!(
        run("{{eq .a 1}}", body),
        Err(TemplateError::Exec(_))
    ));
    assert!(matches!(
        run(r#"{{printf "%9999d" 1}}"#, body),
        Err(TemplateError::Exec(_))
    ));
    assert!(matches!(
        run(r#"{{repeat 100000000 "ab"}}"#, body),
        Err(TemplateError::Exec(_))
    ));
    assert_eq!(
        run(&"a".repeat(MAX_TEMPLATE_BYTES + 1), body),
        Err(TemplateError::TooLarge)
    );
    // Loops that would run for ages run out of steps instead.
    assert_eq!(
        run("{{range 100000}}{{range 100000}}{{end}}{{end}}", body),
        Err(TemplateError::Timeout)
    );
    // Values cannot nest deep enough to overflow the stack when printed or dropped.
    assert!(matches!(
        run(
            "{{$x := list}}{{range 100000}}{{$x = list $x}}{{end}}{{toJson $x}}",
            body
        ),
        Err(TemplateError::Exec(_))
    ));
    // Output is capped.
    assert!(matches!(
        run(r#"{{range 100000}}{{repeat 1000 "x"}}{{end}}"#, body),
        Err(TemplateError::Exec(_) | TemplateError::Timeout)
    ));
}

#[test]
fn apply_inline_and_named() {
    let t = Templates::default();
    let out = t
        .apply(
            &Mode::Inline,
            Fields {
                title: Some("{{.t}}".into()),
                message: Some("m={{.m}}".into()),
                priority: Some(r#"{{if .hot}}5{{else}}3{{end}}"#.into()),
            },
            br#" {"t": "T", "m": "M", "hot": true} "#,
            4096,
        )
        .unwrap();
    assert_eq!(out.title.as_deref(), Some("T"));
    assert_eq!(out.message.as_deref(), Some("m=M"));
    assert_eq!(out.priority.as_deref(), Some("5"));
    assert_eq!(
        t.apply(&Mode::Inline, Fields::default(), b"not json", 4096),
        Err(TemplateError::NotJson)
    );
    assert_eq!(
        t.apply(&Mode::Named("nope".into()), Fields::default(), b"{}", 4096),
        Err(TemplateError::NotFound)
    );
    assert_eq!(
        t.apply(
            &Mode::Named("../etc".into()),
            Fields::default(),
            b"{}",
            4096
        ),
        Err(TemplateError::NotFound)
    );
    assert_eq!(
        t.apply(
            &Mode::Inline,
            Fields {
                message: Some(r#"{{repeat 5000 "x"}}"#.into()),
                ..Fields::default()
            },
            b"{}",
            4096
        ),
        Err(TemplateError::ResultTooLarge)
    );
    assert_eq!(Mode::parse("yes"), Some(Mode::Inline));
    assert_eq!(Mode::parse("1"), Some(Mode::Inline));
    assert_eq!(Mode::parse("no"), None);
    assert_eq!(Mode::parse("grafana"), Some(Mode::Named("grafana".into())));
}

#[test]
fn builtins_parse() {
    let t = Templates::default();
    for (name, _) in BUILTIN {
        let f = t.load(name).unwrap();
        for tpl in [f.title, f.message, f.priority].into_iter().flatten() {
            let parsed = parse::parse(lex::lex(&tpl).unwrap()).unwrap();
            assert!(!parsed.disallowed, "{name}");
        }
    }
}

/// Fragments that random templates are built from: every construct, well or badly
/// nested.
fn fragment() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("{{".to_string()),
        Just("}}".to_string()),
        Just("{{-".to_string()),
        Just(" -}}".to_string()),
        Just("{{range .l}}".to_string()),
        Just("{{range $i, $v := .}}".to_string()),
        Just("{{range 1000}}".to_string()),
        Just("{{if .a}}".to_string()),
        Just("{{with .m}}".to_string()),
        Just("{{else}}".to_string()),
        Just("{{else if .b}}".to_string()),
        Just("{{end}}".to_string()),
        Just("{{break}}".to_string()),
        Just("{{.}}".to_string()),
        Just("{{.a.b.c}}".to_string()),
        Just("{{$x := .l}}".to_string()),
        Just("{{$x}}".to_string()),
        Just("{{printf \"%v %d %s\" . .a}}".to_string()),
        Just("{{repeat 1000 \"ab\"}}".to_string()),
        Just("{{len .l}}".to_string()),
        Just("{{index .l 0}}".to_string()),
        Just("{{toJson .}}".to_string()),
        Just("{{(first .l).x}}".to_string()),
        Just("{{eq .a \"x\" 1}}".to_string()),
        Just("{{. | upper | trunc 3}}".to_string()),
        Just("{{/* c */}}".to_string()),
        Just("(".to_string()),
        Just(")".to_string()),
        Just("\"".to_string()),
        Just("|".to_string()),
        "[ -~]{0,8}",
        "\\PC{0,4}",
    ]
}

fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(serde_json::Value::from),
        "\\PC{0,10}".prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::from),
            prop::collection::btree_map("[a-e]", inner, 0..6)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Any template over any body: an answer or an error, never a panic, and never
    /// more than the output limit or much more than the time limit.
    #[test]
    fn random_templates_are_bounded(parts in prop::collection::vec(fragment(), 0..24), body in json_value()) {
        let template: String = parts.concat();
        let data = Value::from_json(&body);
        let started = Instant::now();
        let result = render(&template, &data, Instant::now() + TIME_LIMIT);
        prop_assert!(started.elapsed() < Duration::from_secs(2));
        if let Ok(out) = result {
            prop_assert!(out.len() <= MAX_OUTPUT);
        }
    }

    /// Arbitrary text as a template never panics.
    #[test]
    fn arbitrary_text_never_panics(template in "\\PC{0,64}") {
        let _ = render(&template, &Value::Nil, Instant::now() + TIME_LIMIT);
    }
}
