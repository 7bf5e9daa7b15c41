package planner

import (
	"path"
	"strings"

	"github.com/flotilla-dev/flotilla/bundle/plan"
)

// IsLvscareUnit says whether unit runs lvscare, whose kernel rules outlive
// a stop on purpose and need their own undo (UndoCleanLvscare): its name
// says so (lvscare/'s unit template is flotilla-lvscare.service), or the
// image renders it from a template whose ExecStart runs `flotilla lvscare`.
func IsLvscareUnit(img *plan.Plan, unit string) bool {
	if strings.Contains(unit, "lvscare") {
		return true
	}
	if img == nil {
		return false
	}
	for _, t := range img.Templates {
		if path.Base(t.Path) != unit {
			continue
		}
		for _, line := range strings.Split(t.Content, "\n") {
			v, ok := strings.CutPrefix(strings.TrimSpace(line), "ExecStart=")
			if !ok {
				continue
			}
			f := strings.Fields(v)
			if len(f) >= 2 && path.Base(strings.TrimLeft(f[0], "-@:+!")) == "flotilla" && f[1] == "lvscare" {
				return true
			}
		}
	}
	return false
}
