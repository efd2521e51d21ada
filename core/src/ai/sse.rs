//! Server-Sent Events: an incremental parser for what a provider streams and a writer for what
//! the gateway streams to its client.
//!
//! The parser follows the WHATWG event-stream interpretation: lines end in LF, CRLF or a lone
//! CR; `event:` names the event; `data:` lines are joined with LF; one space after the colon
//! is stripped; lines starting with `:` are comments; `id:`, `retry:` and unknown fields are
//! ignored; a blank line dispatches the event, and an event without any `data:` line is
//! dropped. Bytes may arrive split anywhere, including between the CR and LF of a CRLF and
//! inside a UTF-8 character: nothing is decoded until its line is complete.
//!
//! Where it is stricter than the spec, on purpose: an event or a line longer than the
//! configured bound is an error (a provider cannot make a worker buffer without limit), and
//! non-UTF-8 data is an error instead of being replaced with U+FFFD (the payloads are JSON,
//! so mangled bytes would only fail later and less clearly).
//!
//! Never does: I/O, `id`/`retry` bookkeeping or reconnection, or anything with the payloads
//! (they are opaque text here; `ai::api` and `ai::translate` read them).

use std::collections::VecDeque;
use std::fmt;

/// The UTF-8 byte order mark, which the spec strips from the very start of a stream.
const BOM: &[u8] = b"\xEF\xBB\xBF";

/// How far a line may exceed the event bound: room for a field prefix (`event: ` is the
/// longest the parser keeps), so an event of exactly the bound still fits on one line.
const LINE_SLACK: usize = 8;

/// Why a stream was refused. After an error the parser stays failed: every later
/// [`SseParser::push`] returns the same error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SseError {
    /// An event's data (with its name) exceeded `max_event_bytes`, or a single line exceeded
    /// it by more than a field prefix.
    EventTooLarge,
    /// A `data:` or `event:` value was not valid UTF-8.
    NotUtf8,
}

impl fmt::Display for SseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SseError::EventTooLarge => "server-sent event exceeds the size limit",
            SseError::NotUtf8 => "server-sent event data is not valid UTF-8",
        })
    }
}

impl std::error::Error for SseError {}

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event:` name, `None` when the event had none (the spec's default, `message`).
    pub event: Option<String>,
    /// The `data:` lines joined with `\n`.
    pub data: String,
}

/// Incremental event-stream parser: [`push`](SseParser::push) bytes as they arrive, then take
/// the events they completed with [`next_event`](SseParser::next_event).
///
/// Memory: only the unfinished line is kept between pushes (consumed bytes are drained, and a
/// push into an empty buffer parses the caller's bytes in place and copies just the tail), plus
/// the events completed but not yet taken.
#[derive(Debug)]
pub struct SseParser {
    max_event_bytes: usize,
    /// The start of a line whose terminator has not arrived yet (never holds a CR or LF).
    buf: Vec<u8>,
    /// The previous line ended in a CR, so a LF that comes next is the rest of a CRLF and not
    /// a blank line. Only ever set while `buf` is empty.
    skip_lf: bool,
    /// Whether the start of the stream (where a BOM may sit) has been passed.
    past_start: bool,
    /// The event being assembled.
    event: Option<String>,
    data: String,
    has_data: bool,
    ready: VecDeque<SseEvent>,
    failed: Option<SseError>,
}

impl SseParser {
    /// A parser that refuses any event whose data and name together exceed `max_event_bytes`,
    /// and any single line (a comment included) longer than that plus a field prefix (8 bytes).
    pub fn new(max_event_bytes: usize) -> Self {
        SseParser {
            max_event_bytes,
            buf: Vec::new(),
            skip_lf: false,
            past_start: false,
            event: None,
            data: String::new(),
            has_data: false,
            ready: VecDeque::new(),
            failed: None,
        }
    }

    /// Appends the next bytes of the stream. Events they complete become available from
    /// [`next_event`](SseParser::next_event), including those completed before an error in
    /// the same bytes.
    pub fn push(&mut self, bytes: &[u8]) -> Result<(), SseError> {
        if let Some(err) = self.failed {
            return Err(err);
        }
        let result = if self.buf.is_empty() {
            // The common case (a read ends on a line boundary): no copy of the whole read.
            self.parse(bytes, 0).map(|consumed| {
                self.buf.extend_from_slice(&bytes[consumed..]);
            })
        } else {
            let mut buf = std::mem::take(&mut self.buf);
            // The kept tail holds no terminator, so the scan resumes after it: a long line
            // arriving in small pieces is scanned once, not once per piece.
            let scanned = buf.len();
            buf.extend_from_slice(bytes);
            let result = self.parse(&buf, scanned);
            if let Ok(consumed) = result {
                buf.drain(..consumed);
            }
            self.buf = buf;
            result.map(drop)
        };
        let result = result.and_then(|()| {
            if self.buf.len() > self.max_line_bytes() {
                Err(SseError::EventTooLarge)
            } else {
                Ok(())
            }
        });
        if let Err(err) = result {
            self.failed = Some(err);
            // Nothing more will be parsed: give the memory back now.
            self.buf = Vec::new();
            self.data = String::new();
        }
        result
    }

    /// The next complete event, in stream order; `None` until more bytes complete one.
    pub fn next_event(&mut self) -> Option<SseEvent> {
        self.ready.pop_front()
    }

    /// Parses every complete line of `input` (which starts at a line start, or after a CR
    /// whose LF may follow) and returns how many bytes were consumed. `scan_from` is where the
    /// search for a terminator starts: the bytes before it are known to hold none.
    fn parse(&mut self, input: &[u8], scan_from: usize) -> Result<usize, SseError> {
        let mut start = 0;
        if !self.past_start {
            if input.len() < BOM.len() && BOM.starts_with(input) {
                // Too few bytes to tell a BOM from data yet; keep them all.
                return Ok(0);
            }
            self.past_start = true;
            if input.starts_with(BOM) {
                start = BOM.len();
            }
        }
        let mut scan = scan_from.max(start);
        loop {
            if self.skip_lf {
                let Some(&next) = input.get(start) else {
                    break;
                };
                self.skip_lf = false;
                if next == b'\n' {
                    start += 1;
                    scan = scan.max(start);
                }
            }
            let Some(offset) = memchr::memchr2(b'\r', b'\n', &input[scan..]) else {
                break;
            };
            let end = scan + offset;
            self.line(&input[start..end])?;
            self.skip_lf = input[end] == b'\r';
            start = end + 1;
            scan = start;
        }
        Ok(start)
    }

    /// Interprets one complete line (without its terminator).
    fn line(&mut self, line: &[u8]) -> Result<(), SseError> {
        if line.len() > self.max_line_bytes() {
            return Err(SseError::EventTooLarge);
        }
        if line.is_empty() {
            self.dispatch();
            return Ok(());
        }
        if line[0] == b':' {
            return Ok(());
        }
        let (field, value) = match memchr::memchr(b':', line) {
            Some(colon) => {
                let value = &line[colon + 1..];
                (&line[..colon], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &[][..]),
        };
        match field {
            b"data" => {
                let text = std::str::from_utf8(value).map_err(|_| SseError::NotUtf8)?;
                let separator = usize::from(self.has_data);
                if self.event_bytes() + separator + text.len() > self.max_event_bytes {
                    return Err(SseError::EventTooLarge);
                }
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(text);
                self.has_data = true;
            }
            b"event" => {
                let text = std::str::from_utf8(value).map_err(|_| SseError::NotUtf8)?;
                let name_len = self.event.as_ref().map_or(0, String::len);
                if self.event_bytes() - name_len + text.len() > self.max_event_bytes {
                    return Err(SseError::EventTooLarge);
                }
                // An empty name is the spec's default type, which the caller sees as `None`.
                self.event = (!text.is_empty()).then(|| text.to_owned());
            }
            // `id`, `retry` and unknown fields: the gateway never reconnects a provider
            // stream, so there is nothing to keep.
            _ => {}
        }
        Ok(())
    }

    fn max_line_bytes(&self) -> usize {
        self.max_event_bytes.saturating_add(LINE_SLACK)
    }

    fn event_bytes(&self) -> usize {
        self.data.len() + self.event.as_ref().map_or(0, String::len)
    }

    /// A blank line: hand over the event if it had data, and start afresh either way.
    fn dispatch(&mut self) {
        if self.has_data {
            self.ready.push_back(SseEvent {
                event: self.event.take(),
                data: std::mem::take(&mut self.data),
            });
        } else {
            self.event = None;
        }
        self.has_data = false;
    }
}

/// Appends one event to `out`: `event: <name>` when named, one `data:` line per line of
/// `data` (LF, CRLF and CR all split, so the payload cannot break the framing), then the blank
/// line that dispatches it. `event` must not contain a line break.
pub fn write_event(out: &mut Vec<u8>, event: Option<&str>, data: &str) {
    if let Some(name) = event {
        debug_assert!(!name.contains(['\r', '\n']), "event name with a line break");
        out.extend_from_slice(b"event: ");
        out.extend_from_slice(name.as_bytes());
        out.push(b'\n');
    }
    let mut rest = data;
    loop {
        let (line, next) = match memchr::memchr2(b'\r', b'\n', rest.as_bytes()) {
            Some(at) => {
                let width = if rest[at..].starts_with("\r\n") { 2 } else { 1 };
                (&rest[..at], Some(&rest[at + width..]))
            }
            None => (rest, None),
        };
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(line.as_bytes());
        out.push(b'\n');
        match next {
            Some(remaining) => rest = remaining,
            None => break,
        }
    }
    out.push(b'\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(event: Option<&str>, data: &str) -> SseEvent {
        SseEvent {
            event: event.map(str::to_owned),
            data: data.to_owned(),
        }
    }

    fn drain(parser: &mut SseParser) -> Vec<SseEvent> {
        std::iter::from_fn(|| parser.next_event()).collect()
    }

    /// Feeds `chunks` one push each and returns every event.
    fn parse_chunks(max: usize, chunks: &[&[u8]]) -> Result<Vec<SseEvent>, SseError> {
        let mut parser = SseParser::new(max);
        let mut events = Vec::new();
        for chunk in chunks {
            parser.push(chunk)?;
            events.extend(drain(&mut parser));
        }
        Ok(events)
    }

    fn parse_all(input: &[u8]) -> Vec<SseEvent> {
        parse_chunks(1 << 20, &[input]).expect("valid stream")
    }

    /// What OpenAI sends for a short streamed answer with `include_usage`.
    const OPENAI_STREAM: &str = concat!(
        "data: {\"id\":\"chatcmpl-1\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\n",
        "data: {\"id\":\"chatcmpl-1\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Grüß \"}}]}\n\n",
        "data: {\"id\":\"chatcmpl-1\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"dich 👋\"}}]}\n\n",
        "data: {\"id\":\"chatcmpl-1\",\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":3}}\n\n",
        "data: [DONE]\n\n",
    );

    /// Anthropic's framing, with CRLF line ends and a comment thrown in.
    const ANTHROPIC_STREAM_CRLF: &str = concat!(
        ": keep-alive\r\n\r\n",
        "event: message_start\r\ndata: {\"type\":\"message_start\"}\r\n\r\n",
        "event: ping\r\ndata: {\"type\": \"ping\"}\r\n\r\n",
        "event: content_block_delta\r\ndata: {\"type\":\"content_block_delta\",\"delta\":{\"text\":\"é\"}}\r\n\r\n",
        "event: message_stop\r\ndata: {\"type\":\"message_stop\"}\r\n\r\n",
    );

    fn openai_events() -> Vec<SseEvent> {
        vec![
            ev(
                None,
                "{\"id\":\"chatcmpl-1\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}",
            ),
            ev(
                None,
                "{\"id\":\"chatcmpl-1\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Grüß \"}}]}",
            ),
            ev(
                None,
                "{\"id\":\"chatcmpl-1\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"dich 👋\"}}]}",
            ),
            ev(
                None,
                "{\"id\":\"chatcmpl-1\",\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":3}}",
            ),
            ev(None, "[DONE]"),
        ]
    }

    fn anthropic_events() -> Vec<SseEvent> {
        vec![
            ev(Some("message_start"), "{\"type\":\"message_start\"}"),
            ev(Some("ping"), "{\"type\": \"ping\"}"),
            ev(
                Some("content_block_delta"),
                "{\"type\":\"content_block_delta\",\"delta\":{\"text\":\"é\"}}",
            ),
            ev(Some("message_stop"), "{\"type\":\"message_stop\"}"),
        ]
    }

    #[test]
    fn an_openai_stream_yields_one_data_only_event_per_chunk() {
        assert_eq!(parse_all(OPENAI_STREAM.as_bytes()), openai_events());
    }

    #[test]
    fn an_anthropic_stream_yields_named_events_and_skips_comments() {
        assert_eq!(
            parse_all(ANTHROPIC_STREAM_CRLF.as_bytes()),
            anthropic_events()
        );
    }

    #[test]
    fn a_split_at_every_byte_position_gives_the_same_events() {
        for (stream, expected) in [
            (OPENAI_STREAM, openai_events()),
            (ANTHROPIC_STREAM_CRLF, anthropic_events()),
        ] {
            let bytes = stream.as_bytes();
            for at in 0..=bytes.len() {
                let (a, b) = bytes.split_at(at);
                let got = parse_chunks(1 << 20, &[a, b]).expect("valid stream");
                assert_eq!(got, expected, "split at byte {at}");
            }
        }
    }

    #[test]
    fn byte_by_byte_and_three_way_splits_give_the_same_events() {
        let bytes = ANTHROPIC_STREAM_CRLF.as_bytes();
        let singles: Vec<&[u8]> = bytes.chunks(1).collect();
        assert_eq!(
            parse_chunks(1 << 20, &singles).expect("valid"),
            anthropic_events()
        );
        // Every pair of cut points over a stream mixing all three line ends and multi-byte
        // characters.
        let mixed = "event: a\rdata: ü1\r\ndata: 2€\n\r\ndata: 😀\r\r".as_bytes();
        let expected = vec![ev(Some("a"), "ü1\n2€"), ev(None, "😀")];
        for i in 0..=mixed.len() {
            for j in i..=mixed.len() {
                let got = parse_chunks(1 << 20, &[&mixed[..i], &mixed[i..j], &mixed[j..]])
                    .expect("valid stream");
                assert_eq!(got, expected, "cuts at {i} and {j}");
            }
        }
    }

    #[test]
    fn a_crlf_split_between_cr_and_lf_is_one_line_end_not_a_blank_line() {
        // Were the LF taken as a blank line, "a" and "b" would be two events.
        let got =
            parse_chunks(1024, &[b"data: a\r", b"\ndata: b\r", b"\n\r", b"\n"]).expect("valid");
        assert_eq!(got, vec![ev(None, "a\nb")]);
    }

    #[test]
    fn lone_cr_and_lone_lf_both_end_lines() {
        assert_eq!(parse_all(b"data: a\rdata: b\r\r"), vec![ev(None, "a\nb")]);
        assert_eq!(parse_all(b"data: a\ndata: b\n\n"), vec![ev(None, "a\nb")]);
        // CR then CRLF: the CR ends the data line, the CRLF is the blank line.
        assert_eq!(parse_all(b"data: x\r\r\n"), vec![ev(None, "x")]);
    }

    #[test]
    fn exactly_one_space_after_the_colon_is_stripped() {
        assert_eq!(parse_all(b"data:x\n\n"), vec![ev(None, "x")]);
        assert_eq!(parse_all(b"data: x\n\n"), vec![ev(None, "x")]);
        assert_eq!(parse_all(b"data:  x \n\n"), vec![ev(None, " x ")]);
        assert_eq!(parse_all(b"data:\tx\n\n"), vec![ev(None, "\tx")]);
        assert_eq!(
            parse_all(b"event:  e\ndata: x\n\n"),
            vec![ev(Some(" e"), "x")]
        );
    }

    #[test]
    fn a_colon_in_the_value_is_kept() {
        assert_eq!(
            parse_all(b"data: {\"a\": \"b:c\"}\n\n"),
            vec![ev(None, "{\"a\": \"b:c\"}")]
        );
    }

    #[test]
    fn a_field_name_alone_is_that_field_with_an_empty_value() {
        assert_eq!(parse_all(b"data\n\n"), vec![ev(None, "")]);
        assert_eq!(parse_all(b"data\ndata\n\n"), vec![ev(None, "\n")]);
        assert_eq!(parse_all(b"data:\n\n"), vec![ev(None, "")]);
    }

    #[test]
    fn comments_ids_retries_and_unknown_fields_are_ignored() {
        let stream =
            b": hello\nid: 7\nretry: 1000\nfoo: bar\nDATA: upper-case is another field\ndata: x\n: mid\n\n";
        assert_eq!(parse_all(stream), vec![ev(None, "x")]);
    }

    #[test]
    fn an_event_without_data_is_skipped_and_its_name_forgotten() {
        let stream = b"event: lonely\n\ndata: after\n\nevent: named\ndata: y\n\n\n\n";
        assert_eq!(
            parse_all(stream),
            vec![ev(None, "after"), ev(Some("named"), "y")]
        );
    }

    #[test]
    fn the_name_is_per_event_and_the_last_event_line_wins() {
        let stream = b"event: a\nevent: b\ndata: 1\n\ndata: 2\n\nevent:\ndata: 3\n\n";
        assert_eq!(
            parse_all(stream),
            vec![ev(Some("b"), "1"), ev(None, "2"), ev(None, "3")]
        );
    }

    #[test]
    fn an_unterminated_event_is_not_dispatched() {
        let mut parser = SseParser::new(1024);
        parser.push(b"data: a\n\ndata: b\n").expect("valid");
        assert_eq!(drain(&mut parser), vec![ev(None, "a")]);
        parser.push(b"\n").expect("valid");
        assert_eq!(drain(&mut parser), vec![ev(None, "b")]);
    }

    #[test]
    fn a_leading_bom_is_stripped_even_when_split() {
        let stream = b"\xEF\xBB\xBFdata: x\n\n";
        for at in 0..=stream.len() {
            let got = parse_chunks(64, &[&stream[..at], &stream[at..]]).expect("valid");
            assert_eq!(got, vec![ev(None, "x")], "split at {at}");
        }
        // Only at the very start: later it is data.
        assert_eq!(
            parse_all(b"data: a\n\n\xEF\xBB\xBFdata: b\n\n"),
            vec![ev(None, "a")]
        );
    }

    #[test]
    fn a_utf8_character_split_across_pushes_is_reassembled() {
        let stream = "data: 😀\n\n".as_bytes();
        let emoji_start = 6;
        for at in emoji_start + 1..emoji_start + 4 {
            let got = parse_chunks(64, &[&stream[..at], &stream[at..]]).expect("valid");
            assert_eq!(got, vec![ev(None, "😀")], "split at {at}");
        }
    }

    #[test]
    fn invalid_utf8_in_data_or_name_is_refused_and_stays_refused() {
        let mut parser = SseParser::new(64);
        assert_eq!(parser.push(b"data: \xFF\n\n"), Err(SseError::NotUtf8));
        assert_eq!(parser.push(b"data: fine\n\n"), Err(SseError::NotUtf8));
        assert_eq!(parser.next_event(), None);
        assert_eq!(
            parse_chunks(64, &[b"event: \xC3\ndata: x\n\n"]),
            Err(SseError::NotUtf8)
        );
        // A comment is never decoded, so its bytes do not matter.
        assert_eq!(
            parse_chunks(64, &[b": \xFF\ndata: x\n\n"]),
            Ok(vec![ev(None, "x")])
        );
    }

    #[test]
    fn an_event_at_the_limit_passes_and_one_byte_more_is_too_large() {
        // Data "aaaa" + "\n" + "bbb" is 8 bytes, plus the 2-byte name.
        let stream = b"event: ev\ndata: aaaa\ndata: bbb\n\n";
        assert_eq!(
            parse_chunks(10, &[stream]),
            Ok(vec![ev(Some("ev"), "aaaa\nbbb")])
        );
        assert_eq!(parse_chunks(9, &[stream]), Err(SseError::EventTooLarge));
    }

    #[test]
    fn the_limit_is_per_event_not_per_stream() {
        let stream = b"data: 12345678\n\n".repeat(100);
        assert_eq!(parse_chunks(8, &[&stream]).expect("valid").len(), 100);
    }

    #[test]
    fn a_line_growing_past_the_limit_across_pushes_is_refused_before_it_ends() {
        // The line bound is 10 + 8: the prefix "data: " and a 12-byte value.
        let mut parser = SseParser::new(10);
        parser.push(b"data: 0123456789").expect("16 bytes fit");
        parser.push(b"AB").expect("18 bytes fit");
        assert_eq!(parser.push(b"C"), Err(SseError::EventTooLarge));
        assert_eq!(parser.push(b"\n\n"), Err(SseError::EventTooLarge));
        // A comment line counts too: the bound is on buffering, whatever the line is.
        assert_eq!(
            parse_chunks(4, &[b": a long comment!\n"]),
            Err(SseError::EventTooLarge)
        );
    }

    #[test]
    fn events_completed_before_an_error_are_still_delivered() {
        let mut parser = SseParser::new(8);
        assert_eq!(
            parser.push(b"data: ok\n\ndata: far too long\n\n"),
            Err(SseError::EventTooLarge)
        );
        assert_eq!(drain(&mut parser), vec![ev(None, "ok")]);
    }

    #[test]
    fn consumed_bytes_are_drained_and_only_the_partial_line_is_kept() {
        let mut parser = SseParser::new(1024);
        for _ in 0..1000 {
            parser
                .push(b"data: {\"x\":1}\n\ndata: {\"y\"")
                .expect("valid");
            assert_eq!(parser.buf, b"data: {\"y\"");
            parser.push(b":2}\n\n").expect("valid");
            assert!(parser.buf.is_empty());
            assert_eq!(drain(&mut parser).len(), 2);
        }
        assert!(parser.buf.capacity() <= 64, "{}", parser.buf.capacity());
    }

    #[test]
    fn written_events_parse_back_to_themselves() {
        let cases: &[(Option<&str>, &str)] = &[
            (None, "[DONE]"),
            (Some("message_start"), "{\"type\":\"message_start\"}"),
            (None, "line one\nline two"),
            (None, "trailing newline\n"),
            (None, ""),
            (None, "\n"),
            (Some("e"), " leading space kept"),
        ];
        for &(event, data) in cases {
            let mut out = Vec::new();
            write_event(&mut out, event, data);
            assert_eq!(parse_all(&out), vec![ev(event, data)], "{data:?}");
        }
    }

    #[test]
    fn the_writer_uses_the_conventional_framing() {
        let mut out = Vec::new();
        write_event(&mut out, Some("error"), "{\"a\":1}");
        write_event(&mut out, None, "x\r\ny\rz");
        assert_eq!(
            out,
            b"event: error\ndata: {\"a\":1}\n\ndata: x\ndata: y\ndata: z\n\n"
        );
    }
}
