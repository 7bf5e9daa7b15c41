package planner

import (
	"fmt"

	"github.com/flotilla-dev/flotilla/bundle/recipe"
	"github.com/flotilla-dev/flotilla/controller/clusterfile"
)

// renderBackup renders the image's BACKUP command (if the node has its role) and
// its RESTORE commands, for `flotilla backup` and `flotilla restore`: np.Backup,
// and np.Restore with one entry per RESTORE stage of the image (nil where the
// node does not have the stage's role). They are not part of the node's apply.
func renderBackup(img *recipe.Recipe, c *clusterfile.Cluster, np *NodePlan, data *Data, isMaster0 bool) error {
	if b := img.Backup; b != nil && recipe.RoleMatches(b.Role, np.Roles, isMaster0) {
		st, err := renderStep(b, c, np.Env, data, nil, nil, nil)
		if err != nil {
			return fmt.Errorf("BACKUP: %w", err)
		}
		st.Reason = "flotilla backup"
		np.Backup = st
	}
	if len(img.Restore) == 0 {
		return nil
	}
	np.Restore = make([]*Step, len(img.Restore))
	for i := range img.Restore {
		s := &img.Restore[i]
		if !recipe.RoleMatches(s.Role, np.Roles, isMaster0) {
			continue
		}
		st, err := renderStep(s, c, np.Env, data, nil, nil, nil)
		if err != nil {
			return fmt.Errorf("RESTORE: %w", err)
		}
		st.Reason = fmt.Sprintf("flotilla restore, stage %d of %d", i+1, len(img.Restore))
		np.Restore[i] = st
	}
	return nil
}
