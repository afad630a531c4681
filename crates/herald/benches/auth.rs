//! What access control costs a request: the store's change check, token
//! authentication and an ACL decision (100 users with one entry each), and the same
//! with access control off.
//!
//! `cargo bench --bench auth`

use std::hint::black_box;
use std::net::IpAddr;
use std::sync::Arc;

use axum::http::{HeaderMap, HeaderValue, header};
use criterion::{Criterion, criterion_group, criterion_main};
use herald::auth::store::{AuthStore, TokenRecord, UserRecord};
use herald::auth::{Access, AuthSettings, Authorizer, Permission, Role, token};

fn bench_auth(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    let auth = Authorizer::open(&AuthSettings {
        auth_file: dir.path().join("auth.db"),
        default_access: Access::DENY_ALL,
    })
    .expect("open auth file");
    let store: Arc<dyn AuthStore> = auth.store().expect("enabled").clone();
    for i in 0..100 {
        let name = format!("user{i}");
        store
            .add_user(&UserRecord {
                name: name.clone(),
                hash: "unused".into(),
                role: Role::User,
            })
            .expect("add user");
        store
            .set_access(&name, &format!("topic{i}*"), Access::READ_WRITE)
            .expect("grant");
    }
    let value = token::generate().expect("token");
    store
        .add_token(
            &TokenRecord {
                digest: token::digest(&value),
                user: "user5".into(),
                shown: token::shown_part(&value).into(),
                label: String::new(),
                expires: 0,
                // Recent: no write-back during the benchmark.
                last_access: i64::MAX / 2,
                last_origin: String::new(),
                created: 1,
            },
            token::MAX_PER_USER,
        )
        .expect("add token");
    let mut headers = HeaderMap::new();
    headers.insert(
        header::AUTHORIZATION,
        HeaderValue::from_str(&format!("Bearer {value}")).expect("header"),
    );
    let ip: IpAddr = "127.0.0.1".parse().expect("ip");
    let principal = auth
        .authenticate_cached(&headers, None, ip)
        .expect("token accepted");

    let mut group = c.benchmark_group("auth");
    group.bench_function("store_generation_check", |b| {
        b.iter(|| black_box(store.generation()))
    });
    group.bench_function("authenticate_token", |b| {
        b.iter(|| black_box(auth.authenticate_cached(&headers, None, ip)))
    });
    group.bench_function("authorize_read", |b| {
        b.iter(|| black_box(auth.authorize(&principal, "topic5-x", Permission::Read)))
    });
    let off = Authorizer::disabled();
    group.bench_function("off_authenticate_and_authorize", |b| {
        b.iter(|| {
            let p = off.authenticate_cached(&headers, None, ip);
            black_box(p.map(|p| off.authorize(&p, "t", Permission::Read)))
        })
    });
    group.finish();
}

criterion_group!(benches, bench_auth);
criterion_main!(benches);
