package filter

import (
	"errors"
	"fmt"
	"reflect"
	"strconv"
	"strings"
	"sync"
)

// A program is a filter compiled for one Go type: every selector resolved to field indexes
// and map keys, every value converted to the kind it is compared with. Evaluating it cannot
// fail; everything that can go wrong is found while compiling.
type program interface {
	eval(v reflect.Value) bool
}

type compiled struct {
	prog program
	err  error
}

type (
	orProg  []program
	andProg []program
	notProg struct{ x program }
)

func (o orProg) eval(v reflect.Value) bool {
	for _, p := range o {
		if p.eval(v) {
			return true
		}
	}
	return false
}

func (a andProg) eval(v reflect.Value) bool {
	for _, p := range a {
		if !p.eval(v) {
			return false
		}
	}
	return true
}

func (n notProg) eval(v reflect.Value) bool { return !n.x.eval(v) }

type stepKind uint8

const (
	stepField  stepKind = iota // a struct field
	stepKey                    // a map entry
	stepStrKey                 // an entry of a map[string]string, read without reflection (no allocation)
	stepEach                   // any element of a slice or array: the rest must hold for one of them
)

type step struct {
	kind  stepKind
	index int           // stepField
	key   reflect.Value // stepKey: the key, converted to the map's key type
	name  string        // stepStrKey
}

// leafKind says how the value at the end of the path is tested.
type leafKind uint8

const (
	leafString  leafKind = iota // any operator on a string
	leafScalar                  // == and != on a bool or a number
	leafLen                     // is empty / is not empty on a slice, array or map
	leafSliceIn                 // in / not in over the elements of a slice or array
	leafMapIn                   // in / not in over the keys of a map
)

type matchProg struct {
	steps  []step
	leaf   leafKind
	op     matchOp
	absent bool   // the result when a nil pointer or missing map key ends the walk
	want   scalar // leafString, leafScalar, leafSliceIn
	key    reflect.Value
	strMap bool // leafMapIn on a map[string]string
	m      *matchNode
}

func (m *matchProg) eval(v reflect.Value) bool { return m.walk(v, 0) }

func (m *matchProg) walk(v reflect.Value, i int) bool {
	for v.Kind() == reflect.Pointer {
		if v.IsNil() {
			return m.absent
		}
		v = v.Elem()
	}
	if i == len(m.steps) {
		return m.test(v)
	}
	s := &m.steps[i]
	switch s.kind {
	case stepField:
		return m.walk(v.Field(s.index), i+1)
	case stepStrKey: // always the last step: its values are strings
		str, ok := v.Interface().(map[string]string)[s.name]
		if !ok {
			return m.absent
		}
		return m.testString(str)
	case stepKey:
		e := v.MapIndex(s.key)
		if !e.IsValid() {
			return m.absent
		}
		return m.walk(e, i+1)
	default: // stepEach
		for j := 0; j < v.Len(); j++ {
			if m.walk(v.Index(j), i+1) {
				return true
			}
		}
		return false
	}
}

func (m *matchProg) test(v reflect.Value) bool {
	switch m.leaf {
	case leafString:
		return m.testString(v.String())
	case leafScalar:
		return m.want.equal(v) == (m.op == opEqual)
	case leafLen:
		return (v.Len() == 0) == (m.op == opIsEmpty)
	case leafSliceIn:
		found := false
		for j := 0; j < v.Len() && !found; j++ {
			e := v.Index(j)
			for e.Kind() == reflect.Pointer && !e.IsNil() {
				e = e.Elem()
			}
			found = e.Kind() != reflect.Pointer && m.want.equal(e)
		}
		return found == (m.op == opIn)
	default: // leafMapIn
		var found bool
		if m.strMap {
			_, found = v.Interface().(map[string]string)[m.want.s]
		} else {
			found = v.MapIndex(m.key).IsValid()
		}
		return found == (m.op == opIn)
	}
}

func (m *matchProg) testString(s string) bool {
	switch m.op {
	case opEqual:
		return s == m.want.s
	case opNotEqual:
		return s != m.want.s
	case opIn:
		return strings.Contains(s, m.want.s)
	case opNotIn:
		return !strings.Contains(s, m.want.s)
	case opIsEmpty:
		return s == ""
	case opIsNotEmpty:
		return s != ""
	case opMatches:
		return m.m.re.MatchString(s)
	default: // opNotMatches
		return !m.m.re.MatchString(s)
	}
}

// scalar is an expression value converted to the kind of the Go value it is compared with.
type scalar struct {
	kind reflect.Kind // String, Bool, Int, Uint or Float64 (one per family)
	s    string
	b    bool
	i    int64
	u    uint64
	f    float64
}

func (w *scalar) equal(v reflect.Value) bool {
	switch w.kind {
	case reflect.String:
		return v.String() == w.s
	case reflect.Bool:
		return v.Bool() == w.b
	case reflect.Int:
		return v.Int() == w.i
	case reflect.Uint:
		return v.Uint() == w.u
	default:
		return v.Float() == w.f
	}
}

// convert turns a raw value into a scalar of t's kind the way go-bexpr's coercion functions
// do: strconv.ParseBool, ParseInt/ParseUint with base 0 (so "0x1F" and "1_000" are numbers)
// and the type's bit size, ParseFloat.
func convert(raw string, t reflect.Type) (scalar, error) {
	var w scalar
	var err error
	switch t.Kind() {
	case reflect.String:
		w.kind, w.s = reflect.String, raw
	case reflect.Bool:
		w.kind = reflect.Bool
		w.b, err = strconv.ParseBool(raw)
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		w.kind = reflect.Int
		w.i, err = strconv.ParseInt(raw, 0, t.Bits())
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Uintptr:
		w.kind = reflect.Uint
		w.u, err = strconv.ParseUint(raw, 0, t.Bits())
	case reflect.Float32, reflect.Float64:
		w.kind = reflect.Float64
		w.f, err = strconv.ParseFloat(raw, t.Bits())
	default:
		return w, errors.ErrUnsupported
	}
	if ne := (*strconv.NumError)(nil); errors.As(err, &ne) {
		err = ne.Err // "invalid syntax" or "value out of range"; the value is in our message
	}
	return w, err
}

func isScalar(k reflect.Kind) bool {
	switch k {
	case reflect.String, reflect.Bool,
		reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Uintptr,
		reflect.Float32, reflect.Float64:
		return true
	}
	return false
}

func deref(t reflect.Type) reflect.Type {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	return t
}

var mapStringString = reflect.TypeFor[map[string]string]()

// compile builds the program for values of type t (struct, map with string keys, or
// pointers to them).
func compile(n node, t reflect.Type) (program, error) {
	root := deref(t)
	if root.Kind() != reflect.Struct && (root.Kind() != reflect.Map || root.Key().Kind() != reflect.String) {
		return nil, fmt.Errorf("filter: cannot filter values of type %s: need a struct, a map with string keys or a pointer to one", t)
	}
	return compileNode(n, root)
}

func compileNode(n node, root reflect.Type) (program, error) {
	switch n := n.(type) {
	case orNode:
		return compileList(n, root, func(ps []program) program { return orProg(ps) })
	case andNode:
		return compileList(n, root, func(ps []program) program { return andProg(ps) })
	case notNode:
		x, err := compileNode(n.x, root)
		if err != nil {
			return nil, err
		}
		return notProg{x}, nil
	default:
		return compileMatch(n.(*matchNode), root)
	}
}

func compileList(kids []node, root reflect.Type, mk func([]program) program) (program, error) {
	ps := make([]program, len(kids))
	for i, k := range kids {
		p, err := compileNode(k, root)
		if err != nil {
			return nil, err
		}
		ps[i] = p
	}
	return mk(ps), nil
}

func compileMatch(n *matchNode, root reflect.Type) (*matchProg, error) {
	steps, t, err := resolve(root, n.sel)
	if err != nil {
		return nil, err
	}
	m := &matchProg{steps: steps, op: n.op, absent: n.op.absent(), m: n}
	declared := t
	unsupported := func() error {
		return fmt.Errorf("filter: operator %q is not supported on selector %q of type %s", n.spell, selectorString(n.sel), declared)
	}
	t = deref(t)
	var valueType reflect.Type // the type the value is converted to
	switch {
	case t.Kind() == reflect.String:
		m.leaf, valueType = leafString, t
	case n.op == opIsEmpty || n.op == opIsNotEmpty:
		switch t.Kind() {
		case reflect.Slice, reflect.Array, reflect.Map:
			m.leaf = leafLen
		default:
			return nil, unsupported()
		}
	case isScalar(t.Kind()):
		if n.op != opEqual && n.op != opNotEqual {
			return nil, unsupported()
		}
		m.leaf, valueType = leafScalar, t
	case n.op != opIn && n.op != opNotIn:
		return nil, unsupported()
	case t.Kind() == reflect.Slice || t.Kind() == reflect.Array:
		elem := deref(t.Elem())
		if !isScalar(elem.Kind()) {
			return nil, unsupported()
		}
		m.leaf, valueType = leafSliceIn, elem
	case t.Kind() == reflect.Map && t.Key().Kind() == reflect.String:
		m.leaf = leafMapIn
		m.want.s = n.value
		m.strMap = t == mapStringString
		m.key = reflect.ValueOf(n.value).Convert(t.Key())
	default:
		return nil, unsupported()
	}
	if valueType != nil {
		if m.want, err = convert(n.value, valueType); err != nil {
			return nil, fmt.Errorf("filter: selector %q: cannot convert %q to %s: %w", selectorString(n.sel), n.value, valueType, err)
		}
	}
	return m, nil
}

// resolve turns a selector into steps from root. A segment applied to a slice or array of
// structs or maps reaches into every element (stepEach), as go-bexpr v0.1.2 does: the match
// then holds when it holds for any element.
func resolve(root reflect.Type, sel []string) ([]step, reflect.Type, error) {
	t := root
	steps := make([]step, 0, len(sel))
	for i, part := range sel {
		t = deref(t)
		for t.Kind() == reflect.Slice || t.Kind() == reflect.Array {
			steps = append(steps, step{kind: stepEach})
			t = deref(t.Elem())
		}
		switch {
		case t.Kind() == reflect.Struct:
			idx, ok := fieldIndex(t, part)
			if !ok {
				return nil, nil, unknownSelector(sel[:i+1])
			}
			steps = append(steps, step{kind: stepField, index: idx})
			t = t.Field(idx).Type
		case t.Kind() == reflect.Map && t.Key().Kind() == reflect.String:
			if t == mapStringString {
				steps = append(steps, step{kind: stepStrKey, name: part})
			} else {
				steps = append(steps, step{kind: stepKey, key: reflect.ValueOf(part).Convert(t.Key())})
			}
			t = t.Elem()
		default:
			return nil, nil, unknownSelector(sel[:i+1])
		}
	}
	return steps, t, nil
}

func unknownSelector(sel []string) error {
	return fmt.Errorf("filter: unknown selector %q", selectorString(sel))
}

// fieldNames caches, per struct type, the selectable names of its fields: exported fields by
// Go name, or by the names in a `bexpr:"a,b"` tag; `bexpr:"-"` hides a field (consul/api
// hides CreateIndex, Namespace and others on AgentService this way). Embedded structs are
// fields named after their type; their fields are not promoted (as in go-bexpr).
var fieldNames sync.Map // reflect.Type → map[string]int

func fieldIndex(t reflect.Type, name string) (int, bool) {
	if m, ok := fieldNames.Load(t); ok {
		i, ok := m.(map[string]int)[name]
		return i, ok
	}
	names := make(map[string]int, t.NumField())
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		if !f.IsExported() {
			continue
		}
		tag, ok := f.Tag.Lookup("bexpr")
		if !ok || tag == "" {
			names[f.Name] = i
			continue
		}
		parts := strings.Split(tag, ",")
		if parts[0] == "-" {
			continue
		}
		for _, p := range parts {
			names[p] = i
		}
	}
	fieldNames.Store(t, names)
	i, ok := names[name]
	return i, ok
}
