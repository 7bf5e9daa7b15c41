package protocol

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"unicode"
	"unicode/utf8"
)

// Size caps of the messages a node sends, checked before a byte is decoded.
const (
	// MaxRegisterBytes caps a registration (64 labels and IPs fit in far less).
	MaxRegisterBytes = 64 << 10
	// MaxHeartbeatBytes caps a heartbeat.
	MaxHeartbeatBytes = 4 << 10
	// MaxEventBytes caps an event: the embedded NATS server's payload limit,
	// room for an output line of MaxEventLine with JSON escapes.
	MaxEventBytes = 1 << 20
	// MaxTaskAckBytes caps a task acknowledgement (an error of MaxEventText, escaped).
	MaxTaskAckBytes = 512 << 10
	// MaxPeerCertRequestBytes caps a peer certificate request (a CSR is about 1 KiB).
	MaxPeerCertRequestBytes = 64 << 10
)

// maxJSONDepth bounds the nesting of a node's message; the deepest, a
// registration's labels, is at depth 3.
const maxJSONDepth = 8

// DecodeStrict is the one decoder of what a node sends (join request,
// registration, heartbeat, event, task acknowledgement, node requests). It
// unmarshals exactly one JSON value into v and refuses, saying why:
//   - more than limit bytes,
//   - a key given twice in one object, also in another letter case
//     (encoding/json would keep the last one and matches field names
//     case-insensitively: a validator and a user of the message could read
//     different values),
//   - nesting deeper than maxJSONDepth,
//   - unknown fields,
//   - anything after the value but white space.
//
// On an error, v must be discarded.
func DecodeStrict(data []byte, limit int, v any) error {
	if len(data) > limit {
		return fmt.Errorf("decode %T: %d bytes, at most %d", v, len(data), limit)
	}
	if err := checkJSONKeys(data); err != nil {
		return fmt.Errorf("decode %T: %w", v, err)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("decode %T: %w", v, err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return fmt.Errorf("decode %T: trailing data after the JSON value", v)
	}
	return nil
}

// checkJSONKeys walks the first JSON value of data and refuses a key repeated
// in one object, compared as encoding/json compares field names (foldKey),
// and nesting deeper than maxJSONDepth. Syntax errors are left to the decoder.
func checkJSONKeys(data []byte) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	type frame struct {
		keys    map[string]bool // nil for an array
		wantKey bool            // in an object, the next token is a key or '}'
	}
	var stack []*frame
	for {
		tok, err := dec.Token()
		if err != nil {
			return nil // EOF or a syntax error: the decoder reports it
		}
		var top *frame
		if n := len(stack); n > 0 {
			top = stack[n-1]
		}
		if top != nil && top.keys != nil && top.wantKey {
			if d, ok := tok.(json.Delim); ok && d == '}' {
				stack = stack[:len(stack)-1]
				if len(stack) == 0 {
					return nil
				}
				continue
			}
			key, _ := tok.(string)
			k := foldKey(key)
			if top.keys[k] {
				return fmt.Errorf("key %q given twice in one object (letter case aside)", key)
			}
			top.keys[k] = true
			top.wantKey = false
			continue
		}
		if top != nil && top.keys != nil {
			top.wantKey = true // this token is a value: a key comes next
		}
		if d, ok := tok.(json.Delim); ok {
			switch d {
			case '{', '[':
				if len(stack) >= maxJSONDepth {
					return fmt.Errorf("nested deeper than %d", maxJSONDepth)
				}
				f := &frame{}
				if d == '{' {
					f.keys, f.wantKey = map[string]bool{}, true
				}
				stack = append(stack, f)
			case ']':
				stack = stack[:len(stack)-1]
			}
		}
		if len(stack) == 0 {
			return nil // one value only; the decoder reports what follows
		}
	}
}

// foldKey folds a key as encoding/json folds field names when it matches
// them: ASCII letters to upper case, any other rune to the smallest rune of
// its Unicode fold set (so "K" (Kelvin sign) and "k", "ſ" and "s" are one).
func foldKey(s string) string {
	out := make([]byte, 0, len(s))
	for i := 0; i < len(s); {
		if c := s[i]; c < utf8.RuneSelf {
			if 'a' <= c && c <= 'z' {
				c -= 'a' - 'A'
			}
			out = append(out, c)
			i++
			continue
		}
		r, n := utf8.DecodeRuneInString(s[i:])
		for {
			r2 := unicode.SimpleFold(r)
			if r2 <= r {
				r = r2
				break
			}
			r = r2
		}
		out = utf8.AppendRune(out, r)
		i += n
	}
	return string(out)
}
