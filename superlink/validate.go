package superlink

import (
	"errors"
	"fmt"
	"math"
	"strings"

	"github.com/google/uuid"

	"github.com/sepal-fl/sepal/flwrproto"
)

// minCreatedAt is 1.8.0's lower bound for created_at (2024-03-27).
const minCreatedAt = 1711497600.0

// problems collects what is wrong with one task, in 1.8.0's order.
type problems []string

func (p *problems) addf(format string, args ...any) { *p = append(*p, fmt.Sprintf(format, args...)) }

func (p problems) err() error {
	if len(p) == 0 {
		return nil
	}
	return errors.New(strings.Join(p, "; "))
}

// validateCommon checks what 1.8.0's validate_task_ins_or_res checks for
// both kinds. It returns false when task is missing (nothing else can be
// checked then).
func validateCommon(p *problems, taskID string, t *flwrproto.Task) bool {
	if taskID != "" {
		p.addf("task_id must be empty (the SuperLink assigns it), got %q", taskID)
	}
	if t == nil {
		p.addf("task is missing")
		return false
	}
	if c := t.CreatedAt; math.IsNaN(c) || math.IsInf(c, 0) || c < minCreatedAt {
		p.addf("task.created_at must be unix seconds after %.0f, got %v", minCreatedAt, c)
	}
	if t.DeliveredAt != "" {
		p.addf("task.delivered_at must be empty (the SuperLink sets it), got %q", t.DeliveredAt)
	}
	if ttl := t.Ttl; math.IsNaN(ttl) || math.IsInf(ttl, 0) || ttl <= 0 {
		p.addf("task.ttl must be higher than zero, got %v", ttl)
	}
	if t.TaskType == "" {
		p.addf("task.task_type must be set")
	}
	if (t.Recordset != nil) == (t.Error != nil) {
		p.addf("task must carry exactly one of recordset or error")
	}
	return true
}

// validateNode checks a node reference as 1.8.0 does: anonymous with id 0,
// or not anonymous with an id.
func validateNode(p *problems, field string, n *flwrproto.Node) {
	switch {
	case n == nil:
		p.addf("%s is missing", field)
	case n.Anonymous && n.NodeId != 0:
		p.addf("%s is anonymous but has node_id %d", field, n.NodeId)
	case !n.Anonymous && n.NodeId == 0:
		p.addf("%s is not anonymous but has node_id 0", field)
	}
}

// validateTaskIns checks a TaskIns pushed by a ServerApp: 1.8.0's rules,
// and a consumer that is a real node (anonymous nodes are not supported).
func validateTaskIns(t *flwrproto.TaskIns) error {
	var p problems
	if t == nil {
		return errors.New("TaskIns is missing")
	}
	if validateCommon(&p, t.TaskId, t.Task) {
		task := t.Task
		switch pr := task.Producer; {
		case pr == nil:
			p.addf("task.producer is missing")
		case pr.NodeId != 0 || !pr.Anonymous:
			p.addf("task.producer must be {node_id: 0, anonymous: true}, got {node_id: %d, anonymous: %v}", pr.NodeId, pr.Anonymous)
		}
		switch c := task.Consumer; {
		case c == nil:
			p.addf("task.consumer is missing")
		case c.Anonymous || c.NodeId == 0:
			p.addf("task.consumer must name a node from GetNodes (node_id != 0, not anonymous)")
		}
		if len(task.Ancestry) != 0 {
			p.addf("task.ancestry must be empty for a TaskIns")
		}
	}
	return p.err()
}

// validateTaskRes checks a TaskRes pushed by a SuperNode and returns the
// id of the TaskIns it answers (ancestry[0]).
func validateTaskRes(t *flwrproto.TaskRes) (uuid.UUID, error) {
	var p problems
	if t == nil {
		return uuid.UUID{}, errors.New("TaskRes is missing")
	}
	var parent uuid.UUID
	if validateCommon(&p, t.TaskId, t.Task) {
		task := t.Task
		validateNode(&p, "task.producer", task.Producer)
		if task.Producer != nil && task.Producer.Anonymous {
			p.addf("task.producer must be the node that pulled the TaskIns, not anonymous")
		}
		validateNode(&p, "task.consumer", task.Consumer)
		if len(task.Ancestry) == 0 {
			p.addf("task.ancestry must hold the id of the TaskIns answered")
		} else {
			var err error
			if parent, err = uuid.Parse(task.Ancestry[0]); err != nil {
				p.addf("task.ancestry[0] %q is not a TaskIns id (a UUID): %v", task.Ancestry[0], err)
			}
		}
	}
	return parent, p.err()
}
