//! The backend's engine thread without Triton: fake sinks and observers around the real engine on the
//! gqa_bf16 fixture. Streaming deltas, batches, cancellation freeing KV blocks, back-pressure, refusals.
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Sender, channel};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use triton_llama::engine::{Engine, EngineConfig};
use triton_llama::sampling::SamplingParams;
use triton_llama::triton::interface::{JobSpec, OutputSet, PromptSpec};
use triton_llama::triton::server::{EndReason, EngineHandle, Observer, RowReply, ServeSettings, Sink, Submission};
use triton_llama::{ErrorKind, loader};

const HF: &str = "tests/fixtures/models/gqa_bf16/hf";

#[derive(Debug)]
enum Event {
    Reply(Vec<RowReply>, bool),
    Failed(ErrorKind, String),
    Cancelled,
}

struct FakeSink {
    tx: Sender<Event>,
    cancel: Arc<AtomicBool>,
}

impl Sink for FakeSink {
    fn is_cancelled(&self) -> bool {
        self.cancel.load(Ordering::SeqCst)
    }
    fn send(&mut self, rows: &[RowReply], last: bool) -> triton_llama::Result<()> {
        let _ = self.tx.send(Event::Reply(rows.to_vec(), last));
        Ok(())
    }
    fn fail(&mut self, e: &triton_llama::Error) {
        let _ = self.tx.send(Event::Failed(e.kind(), e.to_string()));
    }
    fn cancelled(&mut self) {
        let _ = self.tx.send(Event::Cancelled);
    }
}

#[derive(Default)]
struct Gauges(Mutex<Vec<(usize, usize, usize)>>, Mutex<Vec<String>>, Mutex<Vec<bool>>);
impl Observer for Gauges {
    fn engine_up(&self, up: bool) {
        self.2.lock().unwrap().push(up);
    }
    fn finished(&self, r: EndReason, prompts: usize) {
        self.1.lock().unwrap().extend(std::iter::repeat_n(r.as_str().to_string(), prompts));
    }
    fn tokens(&self, _: usize, _: usize) {}
    fn gauges(&self, running: usize, waiting: usize, kv_used: usize, _: usize, _: usize) {
        self.0.lock().unwrap().push((running, waiting, kv_used));
    }
    fn ttft(&self, _: f64) {}
    fn tpot(&self, _: f64) {}
    fn e2e(&self, _: f64) {}
}

fn start(capacity: usize) -> (EngineHandle, Arc<Gauges>) {
    start_with(ServeSettings {
        max_input_len: Some(32),
        capacity,
        add_bos: None,
        stop_strings: None,
        chat_template: None,
        fault_panic_at_step: None,
    })
}

fn start_with(set: ServeSettings) -> (EngineHandle, Arc<Gauges>) {
    let open =
        || Engine::new(loader::open(std::path::Path::new(HF))?, EngineConfig { max_num_seqs: 8, ..Default::default() });
    let h = EngineHandle::start(open, set).unwrap();
    let g = Arc::new(Gauges::default());
    h.attach(1, g.clone());
    (h, g)
}

fn prompt(text: &str, max: usize, ignore_eos: bool) -> PromptSpec {
    let params = SamplingParams { max_new_tokens: max, ignore_eos, ..Default::default() };
    PromptSpec { text: text.into(), params, bad_words: vec![], bias_words: vec![], add_bos: None, chat: false }
}

fn submit(
    h: &EngineHandle,
    g: &Arc<Gauges>,
    prompts: Vec<PromptSpec>,
    stream: bool,
) -> (std::sync::mpsc::Receiver<Event>, Arc<AtomicBool>) {
    let (tx, rx) = channel();
    let cancel = Arc::new(AtomicBool::new(false));
    let spec =
        JobSpec { prompts, stream, exclude_input: true, outputs: OutputSet { names: vec!["outputs", "text_output"] } };
    h.submit(Submission { spec, sink: Box::new(FakeSink { tx, cancel: cancel.clone() }), obs: g.clone() });
    (rx, cancel)
}

fn collect(rx: &std::sync::mpsc::Receiver<Event>) -> Vec<Event> {
    let mut v = Vec::new();
    loop {
        let e = rx.recv_timeout(Duration::from_secs(60)).expect("an answer");
        let end = !matches!(e, Event::Reply(_, false));
        v.push(e);
        if end {
            return v;
        }
    }
}

#[test]
fn streamed_deltas_add_up_to_the_unary_answer_and_batches_answer_once() {
    let (h, g) = start(64);
    let (rx, _) =
        submit(&h, &g, vec![prompt("Hello world", 12, false), prompt("The quick brown fox", 5, false)], false);
    let ev = collect(&rx);
    assert_eq!(ev.len(), 1);
    let Event::Reply(rows, true) = &ev[0] else { panic!("{ev:?}") };
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[1].num_output_tokens, 5);
    let (rx, _) = submit(&h, &g, vec![prompt("Hello world", 12, false)], true);
    let ev = collect(&rx);
    assert!(ev.len() > 2);
    let mut text = String::new();
    for e in &ev {
        let Event::Reply(r, _) = e else { panic!("{e:?}") };
        text.push_str(&r[0].text_output);
        assert_eq!(r[0].outputs, text, "outputs carry the text so far");
    }
    assert_eq!(text, rows[0].text_output);
}

#[test]
fn cancellation_aborts_and_frees_blocks() {
    let (h, g) = start(64);
    let (rx, cancel) = submit(&h, &g, vec![prompt("Hello world", 200, true)], true);
    assert!(matches!(rx.recv_timeout(Duration::from_secs(60)).unwrap(), Event::Reply(_, false)));
    cancel.store(true, Ordering::SeqCst);
    let ev = collect(&rx);
    assert!(matches!(ev.last(), Some(Event::Cancelled)), "{:?}", ev.last());
    assert!(ev.len() < 200);
    // The gauges are published after the cancelled sequence is freed: wait for that, not for a fixed time.
    let idle = || g.0.lock().unwrap().last().copied() == Some((0, 0, 0));
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !idle() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(g.0.lock().unwrap().last().copied(), Some((0, 0, 0)));
    assert!(g.1.lock().unwrap().contains(&"cancelled".to_string()));
}

#[test]
fn full_queue_and_bad_prompts_are_refused_at_once() {
    let (h, g) = start(2);
    let (rx, _) = submit(&h, &g, vec![prompt("a", 4, false), prompt("b", 4, false), prompt("c", 4, false)], false);
    match rx.recv_timeout(Duration::from_secs(1)).unwrap() {
        Event::Failed(ErrorKind::Unavailable, m) => assert!(m.contains("at capacity"), "{m}"),
        e => panic!("{e:?}"),
    }
    let (rx, _) = submit(&h, &g, vec![prompt(&"word ".repeat(100), 4, false)], false);
    match collect(&rx).pop().unwrap() {
        Event::Failed(ErrorKind::InvalidArg, m) => assert!(m.contains("max_input_len is 32"), "{m}"),
        e => panic!("{e:?}"),
    }
    let mut p = prompt("hi", 4, false);
    p.params.top_p = 0.0;
    let (rx, _) = submit(&h, &g, vec![prompt("fine", 4, false), p], false);
    match collect(&rx).pop().unwrap() {
        Event::Failed(ErrorKind::InvalidArg, m) => assert!(m.contains("top_p"), "{m}"),
        e => panic!("{e:?}"),
    }
    // Capacity is returned: a normal request still goes through.
    let (rx, _) = submit(&h, &g, vec![prompt("Hello", 3, false), prompt("World", 3, false)], false);
    assert!(matches!(collect(&rx).pop().unwrap(), Event::Reply(_, true)));
}

#[test]
fn a_panicking_engine_thread_fails_its_request_reports_down_and_refuses_new_work() {
    let (h, g) = start_with(ServeSettings {
        max_input_len: Some(32),
        capacity: 8,
        add_bos: None,
        stop_strings: None,
        chat_template: None,
        fault_panic_at_step: Some(3),
    });
    assert_eq!(*g.2.lock().unwrap(), [true], "up from attach");
    let (rx, _) = submit(&h, &g, vec![prompt("Hello world", 12, true)], true);
    // Two steps' tokens, then the unwind drops the sink unanswered (Triton's sink answers INTERNAL on drop:
    // tests/e2e/test_kubernetes.py).
    let mut ev = Vec::new();
    while let Ok(e) = rx.recv_timeout(Duration::from_secs(60)) {
        ev.push(e);
    }
    assert!(matches!(ev[..], [Event::Reply(_, false), Event::Reply(_, false)]), "{ev:?}");
    // The thread flags itself dead after the unwind that failed the request: wait for the gauge.
    for _ in 0..500 {
        if g.2.lock().unwrap().len() == 2 {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(*g.2.lock().unwrap(), [true, false]);
    let (rx, _) = submit(&h, &g, vec![prompt("Hello", 4, false)], false);
    let Event::Failed(kind, msg) = rx.recv_timeout(Duration::from_secs(60)).unwrap() else { panic!() };
    assert_eq!(kind, ErrorKind::Unavailable);
    assert!(msg.contains("engine thread has stopped"), "{msg}");
    let late = Arc::new(Gauges::default());
    h.attach(2, late.clone());
    assert_eq!(*late.2.lock().unwrap(), [false], "a model attached after the stop reads down at once");
}
