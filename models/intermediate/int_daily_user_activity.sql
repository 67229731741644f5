{#-
    One row per spine day: day totals, distinct users, and users whose first activity in the
    day's period of each declared grain (ISO week, month, quarter; vars.grains) and in the week
    part inside the month falls on that day. An incremental run recomputes whole months (or
    quarters) around the changed days (islands), reading only those events. See day_activity.
-#}
{{ metricsmith.day_activity('user_id', 'users', 'active_users', ref('int_changed_days'), ref('stg_events'),
                            day_totals=true, with_breakdowns=true) }}
