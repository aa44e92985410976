# Stage handling of the FSDD recipe scripts; `source` it from the repository root:
#   parse_stages SCRIPT LAST "$@"   from_stage / stop_stage from --stage N --stop-stage M (1, LAST)
#   run CMD...                      print CMD, then run it
#   stage N TEXT CMD...             print "stage N: TEXT" and run CMD when N is within the range
parse_stages() {
  local script=$1
  from_stage=1
  stop_stage=$2
  shift 2
  while [ $# -gt 0 ]; do
    case "$1" in
      --stage) from_stage=$2; shift 2 ;;
      --stop-stage) stop_stage=$2; shift 2 ;;
      *) echo "$script: unknown argument $1 (see the header of $script)" >&2; exit 2 ;;
    esac
  done
}
run() { echo "+ $*"; "$@"; }
stage() {
  local n=$1 text=$2
  shift 2
  if [ "$from_stage" -le "$n" ] && [ "$stop_stage" -ge "$n" ]; then
    echo "stage $n: $text"
    run "$@"
  fi
}
