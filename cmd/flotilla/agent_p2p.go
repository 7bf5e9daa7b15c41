package main

import (
	"strconv"

	"github.com/flotilla-dev/flotilla/internal/bandwidth"
)

// rateValue is a bandwidth flag (--max-upload 100mbit) stored as bytes per second.
type rateValue struct {
	p   *int64
	raw string
}

func newRateValue(p *int64) *rateValue { return &rateValue{p: p} }

func (r *rateValue) Set(s string) error {
	v, err := bandwidth.Parse(s)
	if err != nil {
		return err
	}
	*r.p, r.raw = int64(v), s
	return nil
}

func (r *rateValue) String() string {
	if r.raw != "" {
		return r.raw
	}
	if r.p == nil || *r.p == 0 {
		return ""
	}
	return strconv.FormatInt(*r.p, 10) + "B/s"
}

func (r *rateValue) Type() string { return "rate" }
