{#-
    One row per spine day: distinct sessions and sessions whose first activity in the day's
    period of each declared grain falls on that day. See day_activity.
-#}
{{ metricsmith.day_activity('session_id', 'sessions', 'sessions', ref('int_changed_days'), ref('stg_events')) }}
