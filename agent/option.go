package agent

// OptionError says which Options field is wrong; the CLI names its flag.
type OptionError struct {
	Option string // the Options field, e.g. "Root"
	Err    error
}

func optionErr(option string, err error) error { return &OptionError{Option: option, Err: err} }

func (e *OptionError) Error() string { return e.Err.Error() }
func (e *OptionError) Unwrap() error { return e.Err }

// OptionName is the Options field the error is about.
func (e *OptionError) OptionName() string { return e.Option }
