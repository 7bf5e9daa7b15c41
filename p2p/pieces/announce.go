package pieces

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
)

// MaxAnnouncementSize bounds an announcement's JSON: a bitfield of a million
// pieces is 128 KiB (175 KiB in base64).
const MaxAnnouncementSize = 1 << 20

// SeedID is the peer ID of the controller's seed. No agent may announce
// under it, and an agent fetches from it only when it presents the
// controller's own certificate.
const SeedID = "controller"

// DecodeAnnouncement is the one decoder of announcements, for every side
// that reads one (the tracker, its access check, tests): whoever checks an
// announcement must see exactly what the tracker records. It refuses, with
// an error saying what is wrong:
//   - more than MaxAnnouncementSize bytes,
//   - unknown fields,
//   - a key given twice in one object, also in another letter case (Go's
//     decoder would keep the last one and match keys case-insensitively),
//   - anything after the JSON value but white space.
func DecodeAnnouncement(r io.Reader) (Announcement, error) {
	var a Announcement
	data, err := io.ReadAll(io.LimitReader(r, MaxAnnouncementSize+1))
	if err != nil {
		return a, fmt.Errorf("announcement: read: %w", err)
	}
	if len(data) > MaxAnnouncementSize {
		return a, fmt.Errorf("announcement: more than %d bytes", MaxAnnouncementSize)
	}
	if err := checkJSONKeys(data); err != nil {
		return a, fmt.Errorf("announcement: %w", err)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&a); err != nil {
		return Announcement{}, fmt.Errorf("announcement: %w", err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return Announcement{}, errors.New("announcement: data after the JSON object")
	}
	return a, nil
}

// MaxFailureReportSize bounds a failure report's JSON.
const MaxFailureReportSize = 4 << 10

// DecodeFailureReport is the one decoder of failure reports, as strict as
// DecodeAnnouncement (size, unknown fields, duplicate keys, trailing data),
// and it checks the report's fields (FailureReport.Validate).
func DecodeFailureReport(r io.Reader) (FailureReport, error) {
	var f FailureReport
	data, err := io.ReadAll(io.LimitReader(r, MaxFailureReportSize+1))
	if err != nil {
		return f, fmt.Errorf("failure report: read: %w", err)
	}
	if len(data) > MaxFailureReportSize {
		return f, fmt.Errorf("failure report: more than %d bytes", MaxFailureReportSize)
	}
	if err := checkJSONKeys(data); err != nil {
		return f, fmt.Errorf("failure report: %w", err)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&f); err != nil {
		return FailureReport{}, fmt.Errorf("failure report: %w", err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return FailureReport{}, errors.New("failure report: data after the JSON object")
	}
	if err := f.Validate(); err != nil {
		return FailureReport{}, err
	}
	return f, nil
}

// checkJSONKeys walks one JSON value and refuses a key repeated in an
// object (compared case-insensitively, as encoding/json matches fields) and
// nesting deeper than an announcement has.
func checkJSONKeys(data []byte) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	type frame struct {
		keys   map[string]bool
		object bool
		expect bool // in an object, the next token is a key
	}
	var stack []*frame
	for {
		tok, err := dec.Token()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		var top *frame
		if len(stack) > 0 {
			top = stack[len(stack)-1]
		}
		if top != nil && top.object && top.expect {
			if d, ok := tok.(json.Delim); ok && d == '}' {
				stack = stack[:len(stack)-1]
				if len(stack) == 0 {
					return nil
				}
				continue
			}
			key, _ := tok.(string)
			k := strings.ToLower(key)
			if top.keys[k] {
				return fmt.Errorf("key %q given twice", key)
			}
			top.keys[k] = true
			top.expect = false
			continue
		}
		if top != nil && top.object {
			top.expect = true // this token is the value; the next one is a key
		}
		if d, ok := tok.(json.Delim); ok {
			switch d {
			case '{', '[':
				if len(stack) >= 8 {
					return errors.New("nested too deep")
				}
				stack = append(stack, &frame{keys: map[string]bool{}, object: d == '{', expect: d == '{'})
			case ']':
				stack = stack[:len(stack)-1]
				if len(stack) > 0 && stack[len(stack)-1].object {
					stack[len(stack)-1].expect = true
				}
			}
		}
		if len(stack) == 0 {
			// One value only; DecodeAnnouncement reports what follows.
			return nil
		}
	}
}
