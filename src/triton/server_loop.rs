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
            o.gauges(e.num_running(), e.num_waiting(), e.kv_blocks_used(), e.kv_blocks_total(), self.inflight.load(Ordering::SeqCst));
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
            let tok = self.engine.tokenizer().clone();
            let default_stops: Vec<String> = match &self.set.stop_strings {
                Some(s) => s.clone(),
                None => self.engine.default_stop_strings().to_vec(),
            };
            for (i, p) in spec.prompts.iter().enumerate() {
                let (text, prompt_ids, chat_stops) = if p.chat {
                    if p.add_bos.is_some() {
                        let m = "input `add_BOS` cannot be combined with `messages` (the chat template decides)";
                        return Err(Error::InvalidRequest(m.into()));
                    }
                    let msgs = crate::chat::parse_messages(&p.text)?;
                    let (text, ids) = self.engine.render_chat(&msgs)?;
                    let stops = self.engine.chat_template().map(|t| t.stop_strings()).unwrap_or_default();
                    (text, ids, stops)
                } else {
                    let bos = p.add_bos.or(self.set.add_bos).unwrap_or(self.engine.default_add_bos());
                    (p.text.clone(), tok.encode(&p.text, bos)?, Vec::new())
                };
                if let Some(m) = self.set.max_input_len
                    && prompt_ids.len() > m {
                        return Err(Error::InvalidRequest(format!("prompt {i} has {} tokens; this model's max_input_len is {m}", prompt_ids.len())));
                    }
                let mut params = p.params.clone();
                params.stop_strings.extend(default_stops.iter().cloned());
                params.stop_strings.extend(chat_stops.into_iter().filter(|s| !default_stops.contains(s)));
                for w in &p.bad_words {
                    let t = tok.encode(w, false)?;
                    if !t.is_empty() {
                        params.banned.push(t);
                    }
                }
                let id = self.next_id;
                self.next_id += 1;
                let num_input = prompt_ids.len();
                self.engine.add_request(Request { id, prompt_ids, params })?;
                ids.push(id);
                let prefix = if spec.exclude_input { String::new() } else { text };
                rows.push(Row {
                    prefix,
                    num_input,
                    text: String::new(),
                    sent_text: 0,
                    tokens: 0,
                    sent_tokens: 0,
                    logprobs: Vec::new(),
                    token_texts: Vec::new(),
                    finish: None,
                    first_token: None,
                    last_token: None,
                });
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
        obs.tokens(rows.iter().map(|r| r.num_input).sum(), 0);
        for (i, id) in ids.iter().enumerate() {
            self.rows.insert(*id, (key, i));
        }
        self.next_id = self.next_id.max(key + 1);
        let want_tokens = spec.outputs.has("output_tokens");
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
            if row.finish.is_none() {
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
        for o in outs {
            let Some(&(key, i)) = self.rows.get(&o.id) else { continue };
            let Some(j) = self.jobs.get_mut(&key) else { continue };
            let r = &mut j.rows[i];
            r.text.push_str(&o.text);
            if o.token.is_some() {
                r.tokens += 1;
                j.fresh += 1;
                r.logprobs.push(o.logprob);
                if let (true, Some(t)) = (j.want_tokens, o.token) {
                    r.token_texts.push(tok.token_text(t).unwrap_or_default());
                }
                if r.first_token.is_none() {
                    r.first_token = Some(now);
                    j.obs.ttft(now.duration_since(j.start).as_secs_f64());
                }
                r.last_token = Some(now);
            }
            if let Some(f) = o.finish {
                r.finish = Some(f);
                self.rows.remove(&o.id);
            }
            if !j.dirty {
                j.dirty = true;
                touched.push(key);
            }
        }
        for key in touched {
            self.flush(key);
        }
    }

    /// Sends what a job has new: a streamed chunk, or the final answer once every row has finished.
    fn flush(&mut self, key: u64) {
        let Some(j) = self.jobs.get_mut(&key) else { return };
        j.dirty = false;
        let done = j.rows.iter().all(|r| r.finish.is_some()) || j.ids.iter().all(|id| !self.rows.contains_key(id));
        if j.fresh > 0 {
            j.obs.tokens(0, std::mem::take(&mut j.fresh));
        }
        let news = j.stream && j.rows.iter().any(|r| r.text.len() > r.sent_text || (r.sent_tokens == 0 && r.tokens > 0));
        if !done && !news {
            return;
        }
        let stream = j.stream;
        let replies: Vec<RowReply> = j
            .rows
            .iter_mut()
            .map(|r| {
                let first = r.sent_text == 0 && r.sent_tokens == 0;
                let reply = RowReply {
                    outputs: format!("{}{}", r.prefix, r.text),
                    text_output: if stream {
                        format!("{}{}", if first { r.prefix.as_str() } else { "" }, &r.text[r.sent_text..])
                    } else {
                        format!("{}{}", r.prefix, r.text)
                    },
                    num_input_tokens: r.num_input as i32,
                    num_output_tokens: if stream { (r.tokens - r.sent_tokens) as i32 } else { r.tokens as i32 },
                    finish_reason: if done { Some(r.finish.unwrap_or(FinishReason::Stop)) } else { r.finish },
                    output_log_probs: if stream { r.logprobs[r.sent_tokens..].to_vec() } else { r.logprobs.clone() },
                    cum_log_prob: r.logprobs.iter().sum(),
                    output_tokens: r.token_texts[if stream { r.sent_tokens.min(r.token_texts.len()) } else { 0 }..]
                        .to_vec(),
                };
                r.sent_text = r.text.len();
                r.sent_tokens = r.tokens;
                reply
            })
            .collect();
        if done {
            // The job leaves (its capacity returned) and is counted before the final answer goes out, which
            // releases the request: a client that reads the metrics, or sends its next request, as soon as it
            // has its answer sees it finished and its slot free.
            let Some(mut j) = self.remove(key) else { return };
            let now = Instant::now();
            j.obs.e2e(now.duration_since(j.start).as_secs_f64());
            for r in &j.rows {
                j.obs.finished(r.finish.map_or(EndReason::Stop, EndReason::from), 1);
                if let (Some(a), Some(b)) = (r.first_token, r.last_token)
                    && r.tokens > 1 {
                        j.obs.tpot(b.duration_since(a).as_secs_f64() / (r.tokens - 1) as f64);
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
