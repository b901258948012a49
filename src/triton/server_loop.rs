//! The engine thread's loop body: admission (tokenize, add), stepping, fan-out of outputs to requests,
//! cancellation, and the end of each request (exactly one final answer per request).
use super::*;

impl Loop {
    pub(super) fn run(mut self) {
        loop {
            let msg = if self.jobs.is_empty() && !self.engine.has_work() {
                match self.rx.recv() {
                    Ok(m) => Some(m),
                    Err(_) => break,
                }
            } else {
                None
            };
            if let Some(m) = msg {
                self.handle(m);
            }
            let mut closed = false;
            loop {
                match self.rx.try_recv() {
                    Ok(m) => self.handle(m),
                    Err(std::sync::mpsc::TryRecvError::Empty) => break,
                    Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                        closed = true;
                        break;
                    }
                }
            }
            if closed {
                break;
            }
            self.check_cancelled();
            if self.engine.has_work() {
                self.steps += 1;
                if self.panic_at_step == Some(self.steps) {
                    panic!("TL_FAULT_PANIC_AT_STEP: injected panic at engine step {}", self.steps);
                }
                match self.engine.step() {
                    Ok(outs) => {
                        // Gauges first: a client that reads them right after its final answer sees its blocks freed.
                        self.publish_gauges();
                        self.dispatch(outs)
                    }
                    Err(e) => {
                        log::error!("engine step failed: {e}");
                        let keys: Vec<u64> = self.jobs.keys().copied().collect();
                        for k in keys {
                            self.end_with_error(k, &e);
                        }
                        if matches!(e, Error::EngineStopped(_)) {
                            // No step can run any more: the thread ends, the model stops accepting work and
                            // `llama_engine_up` goes to 0 (deploy_triton.py's watchdog then stops the server).
                            break;
                        }
                    }
                }
            } else if !self.jobs.is_empty() {
                // Defensive: a job whose sequences are all gone must still get its answer.
                let keys: Vec<u64> = self.jobs.keys().copied().collect();
                for k in keys {
                    self.flush(k);
                }
            }
            self.publish_gauges();
        }
        let keys: Vec<u64> = self.jobs.keys().copied().collect();
        for k in keys {
            self.end_with_error(k, &Error::Unavailable("the model is unloading".into()));
        }
        self.publish_gauges();
    }

    fn handle(&mut self, m: Msg) {
        match m {
            Msg::Submit(s) => self.admit(s),
            Msg::Attach(k, o) => {
                self.observers.insert(k, o);
            }
            Msg::Detach(k) => {
                self.observers.remove(&k);
            }
        }
    }

    fn publish_gauges(&self) {
        let e = &self.engine;
        for o in self.observers.values() {
            o.gauges(
                e.num_running(),
                e.num_waiting(),
                e.kv_blocks_used(),
                e.kv_blocks_total(),
                self.inflight.load(Ordering::SeqCst),
            );
            o.kv_split(e.kv_blocks_cached(), e.kv_blocks_free());
        }
        let (now, before) = (e.prefix_cache_stats(), self.prefix_published.get());
        if now != before {
            for o in self.observers.values() {
                o.prefix_cache(now.queries - before.queries, now.hits - before.hits);
            }
            self.prefix_published.set(now);
        }
    }

    fn admit(&mut self, sub: Submission) {
        let Submission { spec, mut sink, obs } = sub;
        let n = spec.prompts.len();
        let key = self.next_id;
        let mut ids = Vec::with_capacity(n);
        let mut rows = Vec::with_capacity(n);
        let r = (|| -> Result<()> {
            for (i, p) in spec.prompts.iter().enumerate() {
                let id = self.next_id;
                self.next_id += 1;
                let prepared = self.engine.prepare(id, i, p, &self.defaults)?;
                let num_input = prepared.request.prompt_ids.len();
                self.engine.add_request(prepared.request)?;
                ids.push(id);
                let prefix = if spec.exclude_input { String::new() } else { prepared.text };
                rows.push(Row { out: OutputTracker::new(prefix, num_input), first_token: None, last_token: None });
            }
            Ok(())
        })();
        if let Err(e) = r {
            for id in &ids {
                self.engine.abort(*id);
            }
            self.inflight.fetch_sub(n, Ordering::SeqCst);
            obs.finished(EndReason::Rejected, n);
            sink.fail(&e);
            return;
        }
        obs.tokens(rows.iter().map(|r| r.out.num_input()).sum(), 0);
        for (i, id) in ids.iter().enumerate() {
            self.rows.insert(*id, (key, i));
        }
        self.next_id = self.next_id.max(key + 1);
        let texts = ["output_tokens", "output_top_tokens", "prompt_tokens", "prompt_top_tokens"];
        let want_tokens = texts.iter().any(|n| spec.outputs.has(n));
        let (stream, start) = (spec.stream, Instant::now());
        let job = Job { sink, obs, stream, want_tokens, ids, rows, start, dirty: false, fresh: 0 };
        // Job keys share the id space with engine ids; `key` equals the first row's id, unique either way.
        self.jobs.insert(key, job);
    }

    fn check_cancelled(&mut self) {
        let gone: Vec<u64> = self.jobs.iter().filter(|(_, j)| j.sink.is_cancelled()).map(|(k, _)| *k).collect();
        for k in gone {
            if let Some(mut j) = self.remove(k) {
                j.obs.finished(EndReason::Cancelled, j.rows.len());
                j.sink.cancelled();
            }
        }
    }

    /// Takes a job out, aborting whatever of it still runs and returning its capacity.
    fn remove(&mut self, key: u64) -> Option<Job> {
        let j = self.jobs.remove(&key)?;
        for (id, row) in j.ids.iter().zip(&j.rows) {
            self.rows.remove(id);
            if row.out.finish().is_none() {
                self.engine.abort(*id);
            }
        }
        self.inflight.fetch_sub(j.rows.len(), Ordering::SeqCst);
        Some(j)
    }

    fn end_with_error(&mut self, key: u64, e: &Error) {
        if let Some(mut j) = self.remove(key) {
            j.obs.finished(EndReason::Error, j.rows.len());
            j.sink.fail(e);
        }
    }

    fn dispatch(&mut self, outs: Vec<crate::engine::Output>) {
        let now = Instant::now();
        let mut touched = Vec::new();
        let tok = self.engine.tokenizer().clone();
        let mut failed = Vec::new();
        for o in outs {
            let Some(&(key, i)) = self.rows.get(&o.id) else { continue };
            if let Some(e) = o.error {
                // The request fails alone (e.g. its structured output reached a dead end).
                self.rows.remove(&o.id);
                failed.push((key, e));
                continue;
            }
            let Some(j) = self.jobs.get_mut(&key) else { continue };
            let r = &mut j.rows[i];
            let text_of = |t: u32| tok.token_text(t).unwrap_or_default();
            if r.out.record(&o, j.want_tokens.then_some(&text_of as &dyn Fn(u32) -> String)) {
                j.fresh += 1;
                if r.first_token.is_none() {
                    r.first_token = Some(now);
                    j.obs.ttft(now.duration_since(j.start).as_secs_f64());
                }
                r.last_token = Some(now);
            }
            if o.finish.is_some() {
                self.rows.remove(&o.id);
            }
            if !j.dirty {
                j.dirty = true;
                touched.push(key);
            }
        }
        for (key, e) in failed {
            self.end_with_error(key, &Error::InvalidRequest(e));
        }
        for key in touched {
            self.flush(key);
        }
    }

    /// Sends what a job has new: a streamed chunk, or the final answer once every row has finished.
    fn flush(&mut self, key: u64) {
        let Some(j) = self.jobs.get_mut(&key) else { return };
        j.dirty = false;
        let done =
            j.rows.iter().all(|r| r.out.finish().is_some()) || j.ids.iter().all(|id| !self.rows.contains_key(id));
        if j.fresh > 0 {
            j.obs.tokens(0, std::mem::take(&mut j.fresh));
        }
        let news = j.stream && j.rows.iter().any(|r| r.out.has_news());
        if !done && !news {
            return;
        }
        let stream = j.stream;
        let replies: Vec<RowReply> = j.rows.iter_mut().map(|r| r.out.reply(stream, done)).collect();
        if done {
            // The job leaves (its capacity returned) and is counted before the final answer goes out, which
            // releases the request: a client that reads the metrics, or sends its next request, as soon as it
            // has its answer sees it finished and its slot free.
            let Some(mut j) = self.remove(key) else { return };
            let now = Instant::now();
            j.obs.e2e(now.duration_since(j.start).as_secs_f64());
            for r in &j.rows {
                j.obs.finished(r.out.finish().map_or(EndReason::Stop, EndReason::from), 1);
                if let (Some(a), Some(b)) = (r.first_token, r.last_token)
                    && r.out.tokens() > 1
                {
                    j.obs.tpot(b.duration_since(a).as_secs_f64() / (r.out.tokens() - 1) as f64);
                }
            }
            if let Err(e) = j.sink.send(&replies, true) {
                log::warn!("sending the final response failed ({e}); ending the request with the error");
                j.sink.fail(&e);
            }
            return;
        }
        let Some(j) = self.jobs.get_mut(&key) else { return };
        if let Err(e) = j.sink.send(&replies, false) {
            log::warn!("sending a response failed ({e}); ending the request");
            if let Some(mut j) = self.remove(key) {
                j.obs.finished(EndReason::Error, j.rows.len());
                j.sink.fail(&e);
            }
        }
    }
}
