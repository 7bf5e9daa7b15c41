package rolloutview

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"strings"
)

// ErrNotConfirmed is returned by Confirm when the answer was not yes.
var ErrNotConfirmed = errors.New("not confirmed")

// Confirm writes question to out and reads one line from in: "y" or "yes" (any case)
// confirms; anything else, or end of input, returns ErrNotConfirmed.
func Confirm(in io.Reader, out io.Writer, question string) error {
	fmt.Fprintf(out, "%s [y/N] ", question)
	line, err := bufio.NewReader(in).ReadString('\n')
	if err != nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("read the answer: %w", err)
	}
	switch strings.ToLower(strings.TrimSpace(line)) {
	case "y", "yes":
		return nil
	}
	return ErrNotConfirmed
}
