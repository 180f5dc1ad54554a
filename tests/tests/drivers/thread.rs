//! End-to-end tests of generated clients and servers over the thread driver.

use std::time::Duration;

use tokio::time::Instant;
use workerbus::{
    Backoff, CallOptions, Code, Error, ExitReason, ServeOptions, ThreadDriver, ThreadWorker,
};
use workerbus_tests::pb::echo::{
    EchoClient, EchoEvents, EchoServer, FlakyRequest, SleepRequest, SleepState,
};
use workerbus_tests::{EchoWorker, cases};

async fn spawn() -> ThreadWorker {
    ThreadDriver::new()
        .spawn(EchoServer::new(EchoWorker::new()))
        .await
        .expect("spawn a thread worker")
}

#[tokio::test]
async fn every_shared_case_passes_on_a_current_thread_host() {
    let worker = spawn().await;
    cases::all(&worker.channel()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_shared_case_passes_on_a_multi_thread_host_and_worker() {
    let worker = ThreadDriver::new()
        .worker_threads(2)
        .spawn(EchoServer::new(EchoWorker::new()))
        .await
        .unwrap();
    cases::all(&worker.channel()).await;
}

#[tokio::test]
async fn a_request_stream_with_nothing_to_send_ends_with_its_thread_worker() {
    let worker = spawn().await;
    cases::a_request_stream_with_nothing_to_send_ends_with_its_worker(&worker.channel(), || {
        worker.kill()
    })
    .await;
}

#[tokio::test]
async fn every_metadata_case_passes_on_a_current_thread_host() {
    let worker = spawn().await;
    cases::metadata(&worker.channel()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metadata_case_passes_on_a_multi_thread_host_and_worker() {
    let worker = ThreadDriver::new()
        .worker_threads(2)
        .spawn(EchoServer::new(EchoWorker::new()))
        .await
        .unwrap();
    cases::metadata(&worker.channel()).await;
}

#[tokio::test]
async fn every_streaming_case_passes_on_a_current_thread_host() {
    let worker = spawn().await;
    cases::streams(&worker.channel()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_streaming_case_passes_on_a_multi_thread_host_and_worker() {
    let worker = ThreadDriver::new()
        .worker_threads(2)
        .spawn(EchoServer::new(EchoWorker::new()))
        .await
        .unwrap();
    cases::streams(&worker.channel()).await;
}

#[tokio::test]
async fn every_one_way_and_event_case_passes_on_a_current_thread_host() {
    let worker = spawn().await;
    cases::one_way_and_events(&worker.channel()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_one_way_and_event_case_passes_on_a_multi_thread_host_and_worker() {
    let worker = ThreadDriver::new()
        .worker_threads(2)
        .spawn(EchoServer::new(EchoWorker::new()))
        .await
        .unwrap();
    cases::one_way_and_events(&worker.channel()).await;
}

#[tokio::test]
async fn a_subscription_ends_when_its_worker_stops() {
    let worker = spawn().await;
    let mut events = EchoEvents::subscribe(&worker.channel());
    worker.shutdown().await;
    assert!(events.next_event().await.is_none());
}

#[tokio::test(start_paused = true)]
async fn the_schema_timeout_applies_and_names_the_method() {
    // Host time is paused: the host clock jumps to the call's deadline as
    // soon as it has nothing else to do, so this takes no real minute.
    let worker = spawn().await;
    let client = EchoClient::new(worker.channel());
    let started = Instant::now();
    let error = client
        .sleep(SleepRequest {
            tag: "schema timeout".into(),
            ms: 3_600_000,
            blocking: false,
        })
        .await
        .unwrap_err();
    assert!(
        matches!(&error, Error::Timeout { method, after } if *method == "echo.sleep" && *after == Duration::from_secs(60)),
        "{error:?}"
    );
    assert_eq!(started.elapsed(), Duration::from_secs(60));
    assert_eq!(worker.channel().in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn retries_wait_for_the_backoff_between_attempts() {
    let worker = spawn().await;
    let client = EchoClient::new(worker.channel());
    let options = CallOptions::new()
        .no_timeout()
        .backoff(Backoff::exponential(Duration::from_millis(100)).jitter(0.0));
    let started = Instant::now();
    let reply = client
        .flaky_with(FlakyRequest { succeed_on: 4 }, options)
        .await
        .unwrap();
    assert_eq!(reply.attempt, 4);
    // 100 ms, 200 ms, 400 ms before the 2nd, 3rd and 4th attempts.
    assert_eq!(started.elapsed(), Duration::from_millis(700));
}

#[tokio::test]
async fn the_worker_runs_no_more_calls_at_once_than_its_limit() {
    let worker = ThreadDriver::new()
        .serve_options(ServeOptions::new().max_concurrent_calls(3))
        .spawn(EchoServer::new(EchoWorker::new()))
        .await
        .unwrap();
    let client = EchoClient::new(worker.channel());
    let sleeps = (0..12).map(|i| {
        client.sleep(SleepRequest {
            tag: format!("limited {i}"),
            ms: 20,
            blocking: false,
        })
    });
    for result in futures_util::future::join_all(sleeps).await {
        result.unwrap();
    }
    let stats = client.stats(()).await.unwrap();
    assert_eq!(stats.peak_concurrency, 3);
}

#[tokio::test]
async fn shutdown_lets_calls_in_flight_finish_then_stops_the_worker() {
    let worker = spawn().await;
    let channel = worker.channel();
    let client = EchoClient::new(channel.clone());
    let call = client.sleep(SleepRequest {
        tag: "draining".into(),
        ms: 200,
        blocking: false,
    });
    let shutdown = async {
        cases::observe(&channel, "draining", SleepState::Started).await;
        worker.shutdown().await
    };
    let (result, exit) = tokio::join!(call, shutdown);
    result.expect("the call in flight finishes");
    assert_eq!(exit, ExitReason::Stopped);
    assert_eq!(worker.exit_reason(), Some(ExitReason::Stopped));
    cases::calls_after_exit_fail_fast(&channel, &ExitReason::Stopped).await;
}

#[tokio::test]
async fn shutdown_cancels_calls_that_outlast_the_grace_period() {
    let worker = ThreadDriver::new()
        .shutdown_grace(Duration::from_millis(50))
        .spawn(EchoServer::new(EchoWorker::new()))
        .await
        .unwrap();
    let channel = worker.channel();
    let client = EchoClient::new(channel.clone());
    let call = client.sleep(SleepRequest {
        tag: "too slow".into(),
        ms: 60_000,
        blocking: false,
    });
    let shutdown = async {
        cases::observe(&channel, "too slow", SleepState::Started).await;
        worker.shutdown().await
    };
    let (result, exit) = tokio::join!(call, shutdown);
    assert_eq!(exit, ExitReason::Killed);
    assert!(
        matches!(
            &result,
            Err(Error::WorkerExited {
                exit: ExitReason::Killed,
                ..
            })
        ),
        "{result:?}"
    );
    assert_eq!(channel.in_flight(), 0);
}

#[tokio::test]
async fn kill_fails_calls_in_flight_at_once() {
    let worker = spawn().await;
    let channel = worker.channel();
    let client = EchoClient::new(channel.clone());
    let calls = futures_util::future::join_all((0..5).map(|i| {
        client.sleep(SleepRequest {
            tag: format!("killed {i}"),
            ms: 60_000,
            blocking: false,
        })
    }));
    let kill = async {
        for i in 0..5 {
            cases::observe(&channel, &format!("killed {i}"), SleepState::Started).await;
        }
        worker.kill();
    };
    let (results, ()) = tokio::join!(calls, kill);
    for result in results {
        assert!(
            matches!(&result, Err(Error::WorkerExited { method, exit: ExitReason::Killed }) if method == "echo.sleep"),
            "{result:?}"
        );
    }
    assert_eq!(worker.exited().await, ExitReason::Killed);
    cases::calls_after_exit_fail_fast(&channel, &ExitReason::Killed).await;
}

#[tokio::test]
async fn dropping_the_last_handle_stops_the_worker_and_releases_its_handler() {
    let (signal, dropped) = std::sync::mpsc::channel();
    let worker = ThreadDriver::new()
        .spawn(EchoServer::new(EchoWorker::with_drop_signal(signal)))
        .await
        .unwrap();
    let channel = worker.channel();
    cases::unary_round_trip(&channel).await;
    drop(worker);
    // A channel alone keeps the worker alive.
    cases::unary_round_trip(&channel).await;
    drop(channel);
    tokio::task::spawn_blocking(move || dropped.recv_timeout(Duration::from_secs(10)))
        .await
        .unwrap()
        .expect("the worker stopped and dropped its handler");
}

#[tokio::test]
async fn a_worker_is_named_after_its_service_unless_named() {
    assert_eq!(spawn().await.name(), "echo.Echo");
    let named = ThreadDriver::new()
        .name("echo-1")
        .spawn(EchoServer::new(EchoWorker::new()))
        .await
        .unwrap();
    assert_eq!(named.name(), "echo-1");
}

#[tokio::test]
async fn a_health_check_reports_processed_calls_and_memory() {
    let worker = spawn().await;
    let channel = worker.channel();
    for _ in 0..5 {
        cases::unary_round_trip(&channel).await;
    }
    let report = channel.health(Duration::from_secs(5)).await.unwrap();
    assert_eq!(
        report.processed, 5,
        "health checks themselves are not counted"
    );
    assert_eq!((report.running, report.stalled), (0, 0));
    if cfg!(target_os = "linux") {
        assert!(report.memory_bytes > 0);
    }
}

#[test]
fn a_worker_whose_runtime_cannot_be_built_is_a_spawn_error_naming_the_os_error() {
    // In a process of its own, which holds every descriptor it may open.
    let said =
        workerbus_tests::support::with_few_files(env!("CARGO_BIN_EXE_fd-starved"), &["thread"]);
    assert_eq!(
        said,
        "failed to spawn worker starved: could not build its tokio runtime: \
         Too many open files (os error 24)"
    );
}

#[tokio::test]
async fn a_thread_worker_has_no_pid_and_reads_its_end_as_every_handle_does() {
    let worker = spawn().await;
    assert_eq!(
        worker.pid(),
        None,
        "a thread worker runs in the host's process"
    );
    assert_eq!(workerbus::Worker::pid(&worker), None);
    let ended = worker.watch_exit();
    assert_eq!(worker.exit_reason(), None, "it runs");
    assert_eq!(worker.shutdown().await, ExitReason::Stopped);
    assert_eq!(worker.exit_reason(), Some(ExitReason::Stopped));
    assert_eq!(worker.exited().await, ExitReason::Stopped);
    drop(worker);
    assert_eq!(ended.await, ExitReason::Stopped, "it outlives the handle");
}

#[tokio::test(start_paused = true)]
async fn a_call_named_as_a_later_attempt_counts_on_from_it_with_its_own_retries() {
    let worker = spawn().await;
    let client = EchoClient::new(worker.channel());
    // The caller's third attempt, with two retries of its own: attempts 3,
    // 4 and 5, the last of which succeeds.
    let options = CallOptions::new()
        .no_timeout()
        .attempt(3)
        .retries(2)
        .backoff(Backoff::constant(Duration::from_millis(1)));
    let reply = client
        .flaky_with(FlakyRequest { succeed_on: 5 }, options.clone())
        .await
        .unwrap();
    assert_eq!(reply.attempt, 5);
    // One more attempt needed is one more than its retries allow.
    let error = client
        .flaky_with(FlakyRequest { succeed_on: 6 }, options)
        .await
        .unwrap_err();
    assert_eq!(
        error.status().map(|s| s.code()),
        Some(Code::Unavailable),
        "{error}"
    );
}

/// A request of `len` bytes of data, and where its data lives.
fn large_request(len: usize) -> (workerbus_tests::pb::echo::EchoRequest, *const u8) {
    let data = bytes::Bytes::from(vec![7u8; len]);
    let at = data.as_ptr();
    let request = workerbus_tests::pb::echo::EchoRequest {
        text: "large".into(),
        data,
        delay_ms: 0,
    };
    (request, at)
}

#[tokio::test]
async fn a_message_crosses_the_thread_driver_as_a_value_both_ways() {
    // The echo handler moves the request's data into its reply. Encoded on
    // either way, the data would arrive in a buffer of its own (decoding
    // slices it out of that one); moved as a value, the reply's data is the
    // very buffer the host sent. (A call that may be retried is the same,
    // and a retried one works: the shared cases' `flaky` calls.)
    let worker = spawn().await;
    let client = EchoClient::new(worker.channel());
    for len in [0, 64, 64 * 1024, 1 << 20] {
        let (request, sent) = large_request(len);
        let reply = client.echo(request).await.unwrap();
        assert_eq!(reply.data.len(), len);
        if len > 0 {
            assert_eq!(
                reply.data.as_ptr(),
                sent,
                "a {len}-byte request was copied on its way"
            );
        }
    }
}
