//! Server-sent events as upstream servers send them: the `data:` payload of
//! each event, out of a byte stream cut anywhere. Written here rather than
//! taken from a crate because the gateway must bound what it buffers: an
//! upstream sending one endless line must cost an error, not the memory.
//! Line endings, comments and the blank line that ends an event follow the
//! WHATWG HTML standard's event-stream parsing; fields other than `data`
//! (`event`, `id`, `retry`) carry nothing OpenAI-compatible servers use.

/// Largest event accepted, in bytes.
pub const MAX_EVENT_BYTES: usize = 16 << 20;

#[derive(Debug, Default)]
pub struct SseDecoder {
    line: Vec<u8>,
    data: Vec<u8>,
    has_data: bool,
    /// The last byte was `\r`: a `\n` right after it ends no second line.
    after_cr: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("an event of more than {MAX_EVENT_BYTES} bytes")]
pub struct EventTooLarge;

impl SseDecoder {
    /// Takes the next bytes; returns the payloads of the events they complete.
    pub fn push(&mut self, bytes: &[u8]) -> Result<Vec<String>, EventTooLarge> {
        let mut events = Vec::new();
        for &byte in bytes {
            let after_cr = std::mem::replace(&mut self.after_cr, byte == b'\r');
            match byte {
                b'\n' if after_cr => {}
                b'\n' | b'\r' => self.end_line(&mut events),
                _ => {
                    if self.line.len() + self.data.len() >= MAX_EVENT_BYTES {
                        return Err(EventTooLarge);
                    }
                    self.line.push(byte);
                }
            }
        }
        Ok(events)
    }

    fn end_line(&mut self, events: &mut Vec<String>) {
        let line = std::mem::take(&mut self.line);
        if line.is_empty() {
            if std::mem::take(&mut self.has_data) {
                let data = std::mem::take(&mut self.data);
                events.push(String::from_utf8_lossy(&data).into_owned());
            }
            return;
        }
        let (field, value) = match line.iter().position(|&b| b == b':') {
            Some(0) => return, // a comment, such as a keep-alive
            Some(i) => {
                let value = &line[i + 1..];
                (&line[..i], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (&line[..], &[][..]),
        };
        if field == b"data" {
            if self.has_data {
                self.data.push(b'\n');
            }
            self.data.extend_from_slice(value);
            self.has_data = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_come_out_whole_however_the_bytes_are_cut() {
        let stream = b": keep-alive\r\n\r\ndata: {\"a\":1}\r\n\r\nevent: x\ndata:two\ndata: lines\n\ndata: [DONE]\n\n";
        let want = vec!["{\"a\":1}".to_owned(), "two\nlines".to_owned(), "[DONE]".to_owned()];
        for cut in 1..stream.len() {
            let mut decoder = SseDecoder::default();
            let mut got = decoder.push(&stream[..cut]).unwrap_or_default();
            got.extend(decoder.push(&stream[cut..]).unwrap_or_default());
            assert_eq!(got, want, "cut at {cut}");
        }
        let mut one_by_one = SseDecoder::default();
        let got: Vec<String> = stream.iter().flat_map(|b| one_by_one.push(&[*b]).unwrap_or_default()).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn an_endless_line_is_an_error() {
        let mut decoder = SseDecoder::default();
        let chunk = vec![b'x'; 1 << 20];
        let results: Vec<_> = (0..17).map(|_| decoder.push(&chunk)).collect();
        assert!(results.iter().any(|r| r.is_err()));
    }
}
